//! Parsing the device description and SOAP responses with `roxmltree`:
//! DTDs refused (no entity expansion, so no XML bomb), node count bounded,
//! elements matched by local name (namespace prefixes vary by vendor).

use roxmltree::{Document, Node, ParsingOptions};

/// The WAN connection service types used, in order of preference.
pub const SERVICE_TYPES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// The most XML nodes in a device description.
const DESCRIPTION_NODES: u32 = 20_000;
/// The most XML nodes in a SOAP response.
const SOAP_NODES: u32 = 1_000;
/// The most services collected from one description.
const MAX_SERVICES: usize = 64;

/// Why an XML document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The document has a DTD (refused: entity expansion is how XML bombs
    /// work).
    #[error("XML with a DTD is refused")]
    Dtd,
    /// More nodes than the bound.
    #[error("XML has too many nodes")]
    TooManyNodes,
    /// Not well-formed XML (or not UTF-8).
    #[error("malformed XML: {0}")]
    Syntax(String),
    /// Well-formed, but not the expected document (no `root`, no SOAP
    /// `Body`, an unexpected response element…).
    #[error("unexpected XML: {0}")]
    Unexpected(String),
}

/// A service found in a device description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `serviceType`.
    pub service_type: String,
    /// `controlURL`, as written (relative or absolute, unchecked).
    pub control_url: String,
}

/// The parts of a device description UPnP-IGD needs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Description {
    /// `URLBase` (UDA 1.0), if present (unchecked).
    pub url_base: Option<String>,
    /// Every service with a type and control URL, anywhere in the device
    /// tree, in document order (at most 64).
    pub services: Vec<Service>,
}

impl Description {
    /// The WAN connection services, most preferred first (see
    /// [`SERVICE_TYPES`]).
    #[must_use]
    pub fn wan_services(&self) -> Vec<&Service> {
        SERVICE_TYPES
            .iter()
            .flat_map(|t| self.services.iter().filter(move |s| s.service_type == *t))
            .collect()
    }
}

/// A SOAP response: the action's output arguments, or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SoapResponse {
    /// `<ActionResponse>` with its output arguments (local name, text).
    Ok(Vec<(String, String)>),
    /// A SOAP fault with the UPnP error, when given.
    Fault {
        /// `errorCode` (UPnP error code, e.g. 718).
        code: Option<u16>,
        /// `errorDescription`, or the SOAP `faultstring`.
        description: String,
    },
}

impl SoapResponse {
    /// The text of output argument `name`.
    #[must_use]
    pub fn arg(&self, name: &str) -> Option<&str> {
        match self {
            SoapResponse::Ok(args) => args
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
            SoapResponse::Fault { .. } => None,
        }
    }
}

fn parse(bytes: &[u8], nodes_limit: u32) -> Result<Document<'_>, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::Syntax("not UTF-8".into()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit,
    };
    Document::parse_with_options(text, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected => XmlError::Dtd,
        roxmltree::Error::NodesLimitReached => XmlError::TooManyNodes,
        other => XmlError::Syntax(other.to_string()),
    })
}

fn child<'a, 'i>(node: Node<'a, 'i>, local: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == local)
}

fn text_of(node: Node<'_, '_>) -> String {
    node.children()
        .filter(Node::is_text)
        .filter_map(|t| t.text())
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Parses a device description.
///
/// # Errors
/// An [`XmlError`]: a DTD, too many nodes, bad syntax, or a document
/// element other than `root`.
pub fn parse_description(bytes: &[u8]) -> Result<Description, XmlError> {
    let doc = parse(bytes, DESCRIPTION_NODES)?;
    let root = doc.root_element();
    if root.tag_name().name() != "root" {
        return Err(XmlError::Unexpected(format!(
            "document element {:?}, not root",
            root.tag_name().name()
        )));
    }
    let url_base = child(root, "URLBase")
        .map(text_of)
        .filter(|s| !s.is_empty());
    let services = root
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "service")
        .filter_map(|s| {
            let service_type = text_of(child(s, "serviceType")?);
            let control_url = text_of(child(s, "controlURL")?);
            (!service_type.is_empty() && !control_url.is_empty()).then_some(Service {
                service_type,
                control_url,
            })
        })
        .take(MAX_SERVICES)
        .collect();
    Ok(Description { url_base, services })
}

/// Parses the SOAP response to `action` (e.g. `"AddPortMapping"`).
///
/// # Errors
/// An [`XmlError`]: a DTD, too many nodes, bad syntax, no `Envelope` or
/// `Body`, or a body element that is neither `<action>Response` nor
/// `Fault`.
pub fn parse_soap_response(bytes: &[u8], action: &str) -> Result<SoapResponse, XmlError> {
    let doc = parse(bytes, SOAP_NODES)?;
    let env = doc.root_element();
    if env.tag_name().name() != "Envelope" {
        return Err(XmlError::Unexpected("no SOAP Envelope".into()));
    }
    let body = child(env, "Body").ok_or_else(|| XmlError::Unexpected("no SOAP Body".into()))?;
    let first = body
        .children()
        .find(Node::is_element)
        .ok_or_else(|| XmlError::Unexpected("empty SOAP Body".into()))?;
    let name = first.tag_name().name();
    if name == "Fault" {
        let find = |local: &str| {
            first
                .descendants()
                .find(|n| n.is_element() && n.tag_name().name() == local)
                .map(text_of)
        };
        let code = find("errorCode").and_then(|c| c.parse::<u16>().ok());
        let description = find("errorDescription")
            .or_else(|| find("faultstring"))
            .unwrap_or_default();
        return Ok(SoapResponse::Fault { code, description });
    }
    if name.strip_suffix("Response") != Some(action) {
        return Err(XmlError::Unexpected(format!(
            "{name:?} in answer to {action}"
        )));
    }
    let args = first
        .children()
        .filter(Node::is_element)
        .map(|a| (a.tag_name().name().to_owned(), text_of(a)))
        .collect();
    Ok(SoapResponse::Ok(args))
}

#[cfg(test)]
pub(crate) mod samples {
    //! Canned gateway documents, modelled on miniupnpd's.

    /// A miniupnpd-like IGD:2 description: WANIPConnection:2 nested in
    /// WANDevice / WANConnectionDevice, relative control URLs.
    pub(crate) const MINIUPNPD_DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337">
  <specVersion><major>1</major><minor>1</minor></specVersion>
  <device>
    <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
    <friendlyName>OpenWRT router</friendlyName>
    <manufacturer>OpenWRT</manufacturer>
    <modelName>OpenWRT router</modelName>
    <UDN>uuid:12342409-1234-1234-5678-ee1234cc5678</UDN>
    <serviceList>
      <service>
        <serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
        <serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId>
        <SCPDURL>/L3F.xml</SCPDURL>
        <controlURL>/ctl/L3F</controlURL>
        <eventSubURL>/evt/L3F</eventSubURL>
      </service>
    </serviceList>
    <deviceList>
      <device>
        <deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
        <friendlyName>WANDevice</friendlyName>
        <UDN>uuid:12342409-1234-1234-5678-ee1234cc5679</UDN>
        <serviceList>
          <service>
            <serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
            <serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId>
            <SCPDURL>/WANCfg.xml</SCPDURL>
            <controlURL>/ctl/CmnIfCfg</controlURL>
            <eventSubURL>/evt/CmnIfCfg</eventSubURL>
          </service>
        </serviceList>
        <deviceList>
          <device>
            <deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
            <friendlyName>WANConnectionDevice</friendlyName>
            <UDN>uuid:12342409-1234-1234-5678-ee1234cc567a</UDN>
            <serviceList>
              <service>
                <serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
                <serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
                <SCPDURL>/WANIPCn.xml</SCPDURL>
                <controlURL>/ctl/IPConn</controlURL>
                <eventSubURL>/evt/IPConn</eventSubURL>
              </service>
              <service>
                <serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType>
                <serviceId>urn:upnp-org:serviceId:WANIPv6Firewall1</serviceId>
                <SCPDURL>/WANIP6FC.xml</SCPDURL>
                <controlURL>/ctl/IP6FCtl</controlURL>
                <eventSubURL>/evt/IP6FCtl</eventSubURL>
              </service>
            </serviceList>
          </device>
        </deviceList>
      </device>
    </deviceList>
    <presentationURL>http://192.168.1.1/</presentationURL>
  </device>
</root>
"#;

    /// The same with only WANIPConnection:1 (no AddAnyPortMapping).
    pub(crate) fn desc_v1() -> String {
        MINIUPNPD_DESC.replace("WANIPConnection:2", "WANIPConnection:1")
    }

    /// A SOAP success response.
    pub(crate) fn soap_ok(action: &str, service: &str, args: &[(&str, &str)]) -> String {
        let args: String = args
            .iter()
            .map(|(n, v)| format!("<{n}>{v}</{n}>"))
            .collect();
        format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action}Response xmlns:u=\"{service}\">{args}</u:{action}Response></s:Body></s:Envelope>\r\n"
        )
    }

    /// A SOAP fault with UPnP error `code`.
    pub(crate) fn soap_fault(code: u16, desc: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>{desc}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n"
        )
    }

    /// Billion laughs.
    pub(crate) const XML_BOMB: &str = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<root><device><friendlyName>&lol9;</friendlyName></device></root>
"#;
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn miniupnpd_description_yields_the_nested_wan_service() {
        let d = parse_description(MINIUPNPD_DESC.as_bytes()).expect("valid");
        assert_eq!(d.url_base, None);
        assert_eq!(d.services.len(), 4);
        let wan = d.wan_services();
        assert_eq!(wan.len(), 1);
        assert_eq!(wan[0].service_type, SERVICE_TYPES[0]);
        assert_eq!(wan[0].control_url, "/ctl/IPConn");
    }

    #[test]
    fn preference_orders_ip_v2_then_v1_then_ppp() {
        let d = Description {
            url_base: None,
            services: [SERVICE_TYPES[2], SERVICE_TYPES[1], SERVICE_TYPES[0]]
                .iter()
                .map(|t| Service {
                    service_type: (*t).to_owned(),
                    control_url: format!("/{t}"),
                })
                .collect(),
        };
        let order: Vec<&str> = d
            .wan_services()
            .iter()
            .map(|s| s.service_type.as_str())
            .collect();
        assert_eq!(order, SERVICE_TYPES);
    }

    #[test]
    fn xml_bomb_is_refused_as_dtd() {
        let start = std::time::Instant::now();
        assert_eq!(parse_description(XML_BOMB.as_bytes()), Err(XmlError::Dtd));
        assert_eq!(
            parse_soap_response(XML_BOMB.as_bytes(), "GetExternalIPAddress"),
            Err(XmlError::Dtd)
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn too_many_nodes_and_bad_documents_are_refused() {
        let many = format!("<root>{}</root>", "<a/>".repeat(30_000));
        assert_eq!(
            parse_description(many.as_bytes()),
            Err(XmlError::TooManyNodes)
        );
        assert!(matches!(
            parse_description(b"<root><device></root>"),
            Err(XmlError::Syntax(_))
        ));
        assert!(matches!(
            parse_description(b"<html/>"),
            Err(XmlError::Unexpected(_))
        ));
        assert!(matches!(
            parse_description(b"\xff\xfe"),
            Err(XmlError::Syntax(_))
        ));
    }

    #[test]
    fn soap_success_and_fault_parse() {
        let ok = soap_ok(
            "GetExternalIPAddress",
            SERVICE_TYPES[0],
            &[("NewExternalIPAddress", "203.0.113.7")],
        );
        let r = parse_soap_response(ok.as_bytes(), "GetExternalIPAddress").expect("valid");
        assert_eq!(r.arg("NewExternalIPAddress"), Some("203.0.113.7"));
        assert!(matches!(
            parse_soap_response(ok.as_bytes(), "AddPortMapping"),
            Err(XmlError::Unexpected(_))
        ));
        let f = soap_fault(718, "ConflictInMappingEntry");
        assert_eq!(
            parse_soap_response(f.as_bytes(), "AddPortMapping").expect("valid"),
            SoapResponse::Fault {
                code: Some(718),
                description: "ConflictInMappingEntry".into()
            }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_description(&data);
            let _ = parse_soap_response(&data, "AddPortMapping");
        }

        #[test]
        fn arbitrary_xmlish_text_never_panics(s in "[<>/a-zA-Z:=\" &;!\\[\\]-]{0,300}") {
            let _ = parse_description(s.as_bytes());
            let _ = parse_soap_response(s.as_bytes(), "GetExternalIPAddress");
        }
    }
}
