//! SOAP envelopes for the WANIPConnection / WANPPPConnection actions used.

use std::net::Ipv4Addr;

/// The envelope around every action.
const ENVELOPE_START: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>";
const ENVELOPE_END: &str = "</s:Body></s:Envelope>\r\n";

/// The description put on our mappings.
pub(crate) const DESCRIPTION: &str = "natrix";

/// One SOAP action call: its name and input arguments, in the order the
/// service's SCPD lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Action {
    pub(crate) name: &'static str,
    pub(crate) args: Vec<(&'static str, String)>,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl Action {
    /// `GetExternalIPAddress`.
    pub(crate) fn get_external_ip() -> Self {
        Action {
            name: "GetExternalIPAddress",
            args: Vec::new(),
        }
    }

    /// `AddAnyPortMapping` (WANIPConnection:2): UDP, any remote host,
    /// `suggested` as the external port.
    pub(crate) fn add_any(suggested: u16, internal: (Ipv4Addr, u16), lease_secs: u32) -> Self {
        Action {
            name: "AddAnyPortMapping",
            args: mapping_args(suggested, internal, lease_secs),
        }
    }

    /// `AddPortMapping`: UDP, any remote host, external port `external`.
    pub(crate) fn add(external: u16, internal: (Ipv4Addr, u16), lease_secs: u32) -> Self {
        Action {
            name: "AddPortMapping",
            args: mapping_args(external, internal, lease_secs),
        }
    }

    /// `DeletePortMapping` of UDP `external`.
    pub(crate) fn delete(external: u16) -> Self {
        Action {
            name: "DeletePortMapping",
            args: vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external.to_string()),
                ("NewProtocol", "UDP".to_owned()),
            ],
        }
    }

    /// `GetSpecificPortMappingEntry` of UDP `external`: whether the gateway
    /// still holds the mapping, and for whom (P4).
    pub(crate) fn get_specific(external: u16) -> Self {
        Action {
            name: "GetSpecificPortMappingEntry",
            args: vec![
                ("NewRemoteHost", String::new()),
                ("NewExternalPort", external.to_string()),
                ("NewProtocol", "UDP".to_owned()),
            ],
        }
    }

    /// The `SOAPAction` header value (unquoted).
    pub(crate) fn soap_action(&self, service_type: &str) -> String {
        format!("{service_type}#{}", self.name)
    }

    /// The envelope.
    pub(crate) fn envelope(&self, service_type: &str) -> String {
        let mut s = String::with_capacity(512);
        s.push_str(ENVELOPE_START);
        s.push_str(&format!(
            "<u:{} xmlns:u=\"{}\">",
            self.name,
            escape(service_type)
        ));
        for (n, v) in &self.args {
            s.push_str(&format!("<{n}>{}</{n}>", escape(v)));
        }
        s.push_str(&format!("</u:{}>", self.name));
        s.push_str(ENVELOPE_END);
        s
    }
}

fn mapping_args(
    external: u16,
    internal: (Ipv4Addr, u16),
    lease_secs: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external.to_string()),
        ("NewProtocol", "UDP".to_owned()),
        ("NewInternalPort", internal.1.to_string()),
        ("NewInternalClient", internal.0.to_string()),
        ("NewEnabled", "1".to_owned()),
        ("NewPortMappingDescription", DESCRIPTION.to_owned()),
        ("NewLeaseDuration", lease_secs.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_exact() {
        let a = Action::add(4000, (Ipv4Addr::new(192, 168, 1, 20), 4000), 3600);
        let t = "urn:schemas-upnp-org:service:WANIPConnection:1";
        assert_eq!(
            a.soap_action(t),
            "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"
        );
        assert_eq!(
            a.envelope(t),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewRemoteHost></NewRemoteHost><NewExternalPort>4000</NewExternalPort><NewProtocol>UDP</NewProtocol><NewInternalPort>4000</NewInternalPort><NewInternalClient>192.168.1.20</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>natrix</NewPortMappingDescription><NewLeaseDuration>3600</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>\r\n"
        );
        assert_eq!(escape("a<&>\"'"), "a&lt;&amp;&gt;&quot;&apos;");
    }
}
