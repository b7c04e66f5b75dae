//! Identity: node ids (S1), printable keys, key pairs, dial strings and key files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use blake2::{Blake2s256, Digest};
use natrix_proto::wire::NodeId;
use natrix_session::identity::{
    Dial, DialParseError, KEY_DATA_CHARS, KEY_STRING_LEN, KeyParseError, Keypair, PublicKey,
};
use natrix_session::keyfile::{self, KeyFileError};

fn seq_key() -> PublicKey {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8 + 1;
    }
    PublicKey::from_bytes(b)
}

/// RFC 7748 §6.1: Alice's X25519 key pair.
const ALICE_SECRET: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// A small deterministic generator for "many keys" (splitmix64).
fn keys(n: usize) -> impl Iterator<Item = PublicKey> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n).map(move |_| {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes());
        }
        PublicKey::from_bytes(b)
    })
}

// ---------------------------------------------------------------- node id (S1)

#[test]
fn s1_node_id_is_domain_separated_hash_of_public_key() {
    // Known answers, computed independently (Python hashlib.blake2s over
    // b"natrix/node-id/v1" + key, first 8 bytes big-endian).
    assert_eq!(
        PublicKey::from_bytes([0; 32]).node_id(),
        NodeId(0x9847_2fcd_8483_f281)
    );
    assert_eq!(seq_key().node_id(), NodeId(0xc97e_af03_10ab_1276));
    assert_eq!(
        PublicKey::from_bytes(hex32(ALICE_PUBLIC)).node_id(),
        NodeId(0x807b_59c3_5d5a_00d6)
    );

    for key in keys(64) {
        // Stable: the same key always gives the same id.
        assert_eq!(key.node_id(), key.node_id());
        // The definition, spelled out.
        let mut h = Blake2s256::new();
        h.update(b"natrix/node-id/v1");
        h.update(key.as_bytes());
        let d = h.finalize();
        let want = u64::from_be_bytes(d[..8].try_into().unwrap());
        assert_eq!(key.node_id(), NodeId(want));
        // Domain separated: not a plain hash of the key.
        let plain = Blake2s256::digest(key.as_bytes());
        let plain_be = u64::from_be_bytes(plain[..8].try_into().unwrap());
        let plain_le = u64::from_le_bytes(plain[..8].try_into().unwrap());
        assert_ne!(key.node_id().0, plain_be);
        assert_ne!(key.node_id().0, plain_le);
        // Not the key bytes themselves either.
        let raw = u64::from_be_bytes(key.as_bytes()[..8].try_into().unwrap());
        assert_ne!(key.node_id().0, raw);
    }
    // The plain hash of the zero key, for the record: differs from its node id.
    assert_ne!(
        PublicKey::from_bytes([0; 32]).node_id(),
        NodeId(0x320b_5ea9_9e65_3bc2)
    );
}

#[test]
fn distinct_keys_have_distinct_node_ids() {
    let mut ids: Vec<u64> = keys(2000).map(|k| k.node_id().0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2000);
}

// ---------------------------------------------------------------- printable keys

#[test]
fn printable_key_known_answers() {
    // Computed with an independent bech32m encoder (BIP-350 reference algorithm).
    let cases = [
        (
            PublicKey::from_bytes([0; 32]),
            "natrix1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqh5up3c",
        ),
        (
            seq_key(),
            "natrix1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc5z5tpwxqergd3c8g7rusqczn2xs",
        ),
        (
            PublicKey::from_bytes(hex32(ALICE_PUBLIC)),
            "natrix1s5s0qzvfxzn4gayt0hwtg0hhtgxm7wsdycup4a8t5j5ca25mfe4qgehy36",
        ),
    ];
    for (key, text) in cases {
        assert_eq!(key.to_string(), text);
        assert_eq!(text.len(), KEY_STRING_LEN);
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
        assert_eq!(format!("{key:?}"), format!("PublicKey({text})"));
    }
}

#[test]
fn printable_keys_round_trip() {
    for key in keys(500).chain([
        PublicKey::from_bytes([0; 32]),
        PublicKey::from_bytes([0xff; 32]),
    ]) {
        let text = key.to_string();
        assert!(text.starts_with("natrix1"), "{text}");
        assert_eq!(text.len(), KEY_STRING_LEN);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
    }
}

/// Every character a person might mistype into a key, valid bech32 or not.
fn substitutes() -> Vec<char> {
    let mut out: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    out.extend([' ', '-', '_', '.', '@', ':', '\u{e9}', '\u{2212}', '\u{0}']);
    out
}

#[test]
fn every_single_character_substitution_is_rejected() {
    for key in keys(8) {
        let text = key.to_string();
        let chars: Vec<char> = text.chars().collect();
        for pos in 0..chars.len() {
            for sub in substitutes() {
                if sub == chars[pos] {
                    continue;
                }
                let mut typo = chars.clone();
                typo[pos] = sub;
                let typo: String = typo.into_iter().collect();
                let err = typo
                    .parse::<PublicKey>()
                    .expect_err(&format!("accepted {typo:?} (typo of {text})"));
                // A substitution by another bech32 character in the data part
                // keeps every character valid: only the checksum can catch it,
                // and it must say "typo".
                let data_part = pos >= "natrix1".len();
                let valid_lower = "qpzry9x8gf2tvdw0s3jn54khce6mua7l".contains(sub);
                if data_part && valid_lower {
                    assert_eq!(err, KeyParseError::Checksum, "{typo}");
                    assert!(err.to_string().contains("typo"));
                }
            }
        }
    }
}

#[test]
fn key_parse_errors_say_what_is_wrong() {
    let text = seq_key().to_string();

    assert_eq!("".parse::<PublicKey>(), Err(KeyParseError::Empty));
    assert_eq!(
        "hello".parse::<PublicKey>(),
        Err(KeyParseError::MissingSeparator)
    );

    // Wrong prefix: another bech32m string, and a prefix typo.
    let other = text.replacen("natrix", "natrax", 1);
    assert_eq!(
        other.parse::<PublicKey>(),
        Err(KeyParseError::WrongPrefix {
            found: "natrax".into()
        })
    );
    let btc = "bc1p4w46h2at4w46h2at4w46h2at4w46h2at5kreae";
    assert_eq!(
        btc.parse::<PublicKey>(),
        Err(KeyParseError::WrongPrefix { found: "bc".into() })
    );

    // Truncation and extension: wrong length, whatever was cut.
    for cut in 1..KEY_DATA_CHARS {
        let short = &text[..text.len() - cut];
        assert_eq!(
            short.parse::<PublicKey>(),
            Err(KeyParseError::WrongLength {
                found: KEY_DATA_CHARS - cut,
                expected: KEY_DATA_CHARS
            }),
            "{short}"
        );
    }
    assert!(matches!(
        format!("{text}q").parse::<PublicKey>(),
        Err(KeyParseError::WrongLength { found: 59, .. })
    ));
    // A dropped character in the middle.
    let mut dropped = text.clone();
    dropped.remove(20);
    assert!(matches!(
        dropped.parse::<PublicKey>(),
        Err(KeyParseError::WrongLength { found: 57, .. })
    ));

    // Bad characters report a 1-based position.
    let mut bad = text.clone();
    bad.replace_range(10..11, "b");
    assert_eq!(
        bad.parse::<PublicKey>(),
        Err(KeyParseError::BadCharacter {
            position: 11,
            character: 'b'
        })
    );
    let msg = bad.parse::<PublicKey>().unwrap_err().to_string();
    assert!(msg.contains("position 11"), "{msg}");
    // Non-ASCII counts as one character.
    let mut uni = text.clone();
    uni.replace_range(7..8, "\u{e9}");
    assert_eq!(
        uni.parse::<PublicKey>(),
        Err(KeyParseError::BadCharacter {
            position: 8,
            character: '\u{e9}'
        })
    );
    // Whitespace is not trimmed.
    assert!(matches!(
        format!("{text}\n").parse::<PublicKey>(),
        Err(KeyParseError::BadCharacter { position: 66, .. })
    ));
    assert!(matches!(
        format!(" {text}").parse::<PublicKey>(),
        Err(KeyParseError::WrongPrefix { .. })
    ));

    // Messages name the problem.
    assert!(
        KeyParseError::Checksum.to_string().contains("typo"),
        "checksum errors say typo"
    );
}

#[test]
fn upper_case_keys_are_accepted_mixed_case_is_not() {
    // Documented: Display prints lower case; FromStr accepts all-lower and
    // all-upper (BIP-173), refuses a mixture.
    for key in keys(20) {
        let text = key.to_string();
        assert_eq!(text.to_uppercase().parse::<PublicKey>(), Ok(key));
        let mut mixed = text.clone();
        mixed.replace_range(0..1, "N");
        assert_eq!(mixed.parse::<PublicKey>(), Err(KeyParseError::MixedCase));
        let upper = text.to_uppercase();
        let mut mixed = upper.clone();
        let last = mixed.len() - 1;
        let c = mixed[last..].to_lowercase();
        if c != mixed[last..] {
            mixed.replace_range(last.., &c);
            assert_eq!(mixed.parse::<PublicKey>(), Err(KeyParseError::MixedCase));
        }
    }
}

#[test]
fn non_canonical_padding_is_rejected() {
    // Build a string with the right checksum but non-zero padding bits by
    // encoding 33 bytes' worth of 5-bit groups by hand: take the canonical key,
    // flip the padding bit of its last data character and fix the checksum with
    // the bech32 crate.
    use bech32::primitives::iter::Fe32IterExt;
    use bech32::{Bech32m, Fe32, Hrp};
    let key = seq_key();
    let text = key.to_string();
    let data: Vec<Fe32> = text["natrix1".len()..text.len() - 6]
        .chars()
        .map(|c| Fe32::from_char(c).unwrap())
        .collect();
    let mut fes = data.clone();
    let last = fes.len() - 1;
    fes[last] = Fe32::try_from(fes[last].to_u8() | 1).unwrap();
    let hrp = Hrp::parse("natrix").unwrap();
    let crafted: String = fes
        .into_iter()
        .with_checksum::<Bech32m>(&hrp)
        .chars()
        .collect();
    assert_ne!(crafted, text);
    assert_eq!(
        crafted.parse::<PublicKey>(),
        Err(KeyParseError::NonCanonical)
    );
}

#[test]
fn old_bech32_checksum_is_a_checksum_error() {
    // The same data with a bech32 (not bech32m) checksum.
    let key = seq_key();
    let hrp = bech32::Hrp::parse("natrix").unwrap();
    let legacy = bech32::encode::<bech32::Bech32>(hrp, key.as_bytes()).unwrap();
    assert_eq!(legacy.parse::<PublicKey>(), Err(KeyParseError::Checksum));
}

// ---------------------------------------------------------------- key pairs

#[test]
fn keypair_public_key_is_x25519_rfc7748() {
    let kp = Keypair::from_secret(hex32(ALICE_SECRET));
    assert_eq!(kp.public(), PublicKey::from_bytes(hex32(ALICE_PUBLIC)));
    assert_eq!(kp.secret_bytes(), &hex32(ALICE_SECRET));
    // Bob, same RFC.
    let bob = Keypair::from_secret(hex32(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    ));
    assert_eq!(
        bob.public(),
        PublicKey::from_bytes(hex32(
            "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
        ))
    );
}

#[test]
fn keypair_debug_never_prints_the_secret() {
    let secret = [0xabu8; 32];
    let kp = Keypair::from_secret(secret);
    let dbg = format!("{kp:?} {kp:#?}");
    assert!(!dbg.to_lowercase().contains("abab"), "{dbg}");
    assert!(!dbg.contains("171"), "{dbg}");
    assert!(dbg.contains(&kp.public().to_string()));
    assert!(dbg.contains("redacted"));
}

#[test]
fn keypair_is_deterministic_and_clone_preserves_it() {
    let a = Keypair::from_secret([7; 32]);
    let b = Keypair::from_secret([7; 32]);
    assert_eq!(a.public(), b.public());
    let c = a.clone();
    drop(a);
    assert_eq!(c.public(), b.public());
    assert_eq!(c.secret_bytes(), &[7; 32]);
    assert_ne!(Keypair::from_secret([8; 32]).public(), b.public());
}

// ---------------------------------------------------------------- dial strings

#[test]
fn dial_round_trips_ipv4_ipv6_and_names() {
    for key in keys(10) {
        let cases = [
            (format!("{key}@192.0.2.7:4433"), "192.0.2.7", 4433),
            (format!("{key}@[2001:db8::1]:65535"), "2001:db8::1", 65535),
            (format!("{key}@[::1]:1"), "::1", 1),
            (format!("{key}@example.org:4433"), "example.org", 4433),
            (
                format!("{key}@relay-1.natrix.example:9"),
                "relay-1.natrix.example",
                9,
            ),
            (format!("{key}@localhost:80"), "localhost", 80),
        ];
        for (text, host, port) in cases {
            let dial: Dial = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(dial.key, key);
            assert_eq!(dial.host, host);
            assert_eq!(dial.port, port);
            assert_eq!(dial.to_string(), text);
            assert_eq!(dial.to_string().parse::<Dial>(), Ok(dial));
        }
    }
}

#[test]
fn dial_socket_addr_only_for_ip_literals() {
    let key = seq_key();
    let v4: Dial = format!("{key}@192.0.2.7:4433").parse().unwrap();
    assert_eq!(
        v4.socket_addr(),
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            4433
        ))
    );
    let v6: Dial = format!("{key}@[2001:db8::1]:5").parse().unwrap();
    assert_eq!(
        v6.socket_addr(),
        Some(SocketAddr::new(
            IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()),
            5
        ))
    );
    let name: Dial = format!("{key}@example.org:4433").parse().unwrap();
    assert_eq!(name.socket_addr(), None);

    for addr in [
        "192.0.2.1:7".parse::<SocketAddr>().unwrap(),
        "[fe80::1:2]:65000".parse().unwrap(),
    ] {
        let d = Dial::from_socket_addr(key, addr);
        assert_eq!(d.socket_addr(), Some(addr));
        assert_eq!(d.to_string().parse::<Dial>(), Ok(d));
    }
}

#[test]
fn bad_dial_strings_are_rejected_with_the_right_variant() {
    let key = seq_key();
    let k = key.to_string();
    use DialParseError as E;
    let cases: Vec<(String, E)> = vec![
        (k.clone(), E::MissingAt),
        (format!("{k}example.org:1"), E::MissingAt),
        (format!("{k}@"), E::EmptyHost),
        (format!("{k}@:4433"), E::EmptyHost),
        (format!("{k}@example.org"), E::MissingPort),
        (format!("{k}@example.org:"), E::MissingPort),
        (format!("{k}@example.org:0"), E::BadPort("0".into())),
        (format!("{k}@example.org:65536"), E::BadPort("65536".into())),
        (format!("{k}@example.org:+80"), E::BadPort("+80".into())),
        (format!("{k}@example.org:http"), E::BadPort("http".into())),
        (
            format!("{k}@exa mple.org:80"),
            E::BadHost("exa mple.org".into()),
        ),
        (format!("{k}@exa/mple:80"), E::BadHost("exa/mple".into())),
        (format!("{k}@a@b:80"), E::BadHost("a@b".into())),
        (
            format!("{k}@{}:80", "a".repeat(254)),
            E::BadHost("a".repeat(254)),
        ),
        (format!("{k}@[::1]"), E::MissingPort),
        (format!("{k}@[::1]:"), E::MissingPort),
        (format!("{k}@[::1]x80"), E::BadPort("x80".into())),
        (format!("{k}@[::1]:99999"), E::BadPort("99999".into())),
        (format!("{k}@[::1:80"), E::BadIpv6("[::1:80".into())),
        (format!("{k}@[1.2.3.4]:80"), E::BadIpv6("1.2.3.4".into())),
        (
            format!("{k}@[example.org]:80"),
            E::BadIpv6("example.org".into()),
        ),
        (
            format!("{k}@[fe80::1%eth0]:80"),
            E::BadIpv6("fe80::1%eth0".into()),
        ),
        (
            format!("{k}@2001:db8::1:80"),
            E::UnbracketedIpv6("2001:db8::1:80".into()),
        ),
        (format!("{k}@fe80::zz:80"), E::BadHost("fe80::zz".into())),
        (
            format!("{}@example.org:80", &k[..k.len() - 1]),
            E::Key(KeyParseError::WrongLength {
                found: KEY_DATA_CHARS - 1,
                expected: KEY_DATA_CHARS,
            }),
        ),
        (
            "natrix@example.org:80".to_string(),
            E::Key(KeyParseError::MissingSeparator),
        ),
        ("@example.org:80".to_string(), E::Key(KeyParseError::Empty)),
    ];
    for (text, want) in cases {
        assert_eq!(text.parse::<Dial>(), Err(want.clone()), "{text}");
        // Messages are human-readable, non-empty.
        assert!(!want.to_string().is_empty());
    }
    // A typo in the key is reported as such.
    let mut typo = k.clone();
    let c = if typo.ends_with('q') { "p" } else { "q" };
    let last = typo.len() - 1;
    typo.replace_range(last.., c);
    assert_eq!(
        format!("{typo}@example.org:80").parse::<Dial>(),
        Err(E::Key(KeyParseError::Checksum))
    );
}

// ---------------------------------------------------------------- key files

/// A fresh, unique directory under the system temp dir; removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "natrix-session-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_file(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn keyfile_create_then_load_gives_the_same_key() {
    let dir = TempDir::new("create-load");
    let path = dir.path("node.key");
    let created = keyfile::create(&path, hex32(ALICE_SECRET)).unwrap();
    let loaded = keyfile::load(&path).unwrap();
    assert_eq!(loaded.public(), created.public());
    assert_eq!(loaded.secret_bytes(), created.secret_bytes());
    assert_eq!(loaded.public(), PublicKey::from_bytes(hex32(ALICE_PUBLIC)));
    // The format, byte for byte.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("natrix-secret-key-v1 {ALICE_SECRET}\n"));

    // create never overwrites.
    let again = keyfile::create(&path, [1; 32]).unwrap_err();
    assert!(matches!(again, KeyFileError::Write { .. }), "{again}");
    assert!(again.to_string().contains(&path.display().to_string()));
    assert_eq!(keyfile::load(&path).unwrap().public(), created.public());
}

#[test]
fn keyfile_load_or_create_creates_once_then_loads() {
    let dir = TempDir::new("load-or-create");
    let path = dir.path("id.key");
    let mut calls = 0;
    let first = keyfile::load_or_create(&path, || {
        calls += 1;
        [9; 32]
    })
    .unwrap();
    assert_eq!(calls, 1);
    let second = keyfile::load_or_create(&path, || panic!("must not make a new secret")).unwrap();
    assert_eq!(first.public(), second.public());
    assert_eq!(second.secret_bytes(), &[9; 32]);

    // Errors other than Missing are not papered over by creating a new key.
    write_file(&path, b"garbage\n");
    let err = keyfile::load_or_create(&path, || panic!("must not replace a bad file")).unwrap_err();
    assert!(matches!(err, KeyFileError::Malformed { .. }), "{err}");
}

#[cfg(unix)]
#[test]
fn keyfile_is_created_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let path = dir.path("node.key");
    keyfile::create(&path, [3; 32]).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[cfg(unix)]
#[test]
fn keyfile_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perms");
    let path = dir.path("node.key");
    keyfile::create(&path, [3; 32]).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602, 0o620, 0o666, 0o607] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = keyfile::load(&path).unwrap_err();
        match &err {
            KeyFileError::Permissions { path: p, mode: m } => {
                assert_eq!(p, &path);
                assert_eq!(*m, mode);
            }
            other => panic!("mode {mode:o}: {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        // load_or_create does not replace it either.
        let err = keyfile::load_or_create(&path, || panic!("no new key")).unwrap_err();
        assert!(matches!(err, KeyFileError::Permissions { .. }));
    }
    // 0400 is fine (owner-only, read-only).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(keyfile::load(&path).is_ok());
}

#[test]
fn keyfile_missing_garbage_and_wrong_length_have_their_variants() {
    let dir = TempDir::new("bad");

    let missing = dir.path("absent.key");
    let err = keyfile::load(&missing).unwrap_err();
    assert!(matches!(&err, KeyFileError::Missing { path } if *path == missing));
    assert!(err.to_string().contains(&missing.display().to_string()));

    let hex64 = "ab".repeat(32);
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"".to_vec(), "empty"),
        ("garbage", b"hello world\n".to_vec(), "header"),
        ("binary", vec![0xff, 0xfe, 0, 1], "not text"),
        (
            "short",
            format!("natrix-secret-key-v1 {}\n", &hex64[..62]).into_bytes(),
            "62 hex digits",
        ),
        (
            "long",
            format!("natrix-secret-key-v1 {hex64}00\n").into_bytes(),
            "66 hex digits",
        ),
        (
            "badhex",
            format!("natrix-secret-key-v1 {}zz\n", &hex64[..62]).into_bytes(),
            "character 63",
        ),
        (
            "header",
            format!("natrix-secret-key-v2 {hex64}\n").into_bytes(),
            "wrong header",
        ),
        ("noheader", format!("{hex64}\n").into_bytes(), "header"),
        (
            "twolines",
            format!("natrix-secret-key-v1 {hex64}\nmore\n").into_bytes(),
            "more than one line",
        ),
        ("huge", vec![b'a'; 10_000], "longer than"),
    ];
    for (name, contents, reason_part) in bad {
        let path = dir.path(name);
        write_file(&path, &contents);
        let err = keyfile::load(&path).unwrap_err();
        match &err {
            KeyFileError::Malformed { path: p, reason } => {
                assert_eq!(p, &path);
                assert!(reason.contains(reason_part), "{name}: {reason}");
                // Never echo the secret.
                assert!(!reason.contains(&hex64[..16]), "{name}: {reason}");
            }
            other => panic!("{name}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("natrix-secret-key-v1"), "{msg}");
    }

    // Tolerated: CRLF line end, no final newline, upper-case hex.
    for (name, contents) in [
        ("crlf", format!("natrix-secret-key-v1 {hex64}\r\n")),
        ("nonl", format!("natrix-secret-key-v1 {hex64}")),
        (
            "upper",
            format!("natrix-secret-key-v1 {}\n", hex64.to_uppercase()),
        ),
    ] {
        let path = dir.path(name);
        write_file(&path, contents.as_bytes());
        let kp = keyfile::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kp.secret_bytes(), &[0xab; 32]);
    }

    // A directory is unreadable, not missing.
    let sub = dir.path("subdir");
    std::fs::create_dir(&sub).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let err = keyfile::load(&sub).unwrap_err();
    assert!(matches!(err, KeyFileError::Unreadable { .. }), "{err}");

    // Creating in a directory that does not exist is a Write error.
    let nowhere = dir.path("no/such/dir/node.key");
    let err = keyfile::create(&nowhere, [1; 32]).unwrap_err();
    assert!(matches!(err, KeyFileError::Write { .. }), "{err}");
    assert!(err.to_string().contains(&nowhere.display().to_string()));
}
