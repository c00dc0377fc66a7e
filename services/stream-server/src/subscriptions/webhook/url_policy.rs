//! Which webhook URLs the server will deliver to (PROTOCOL §6.2, §12.8):
//! the defence against a subscription turning the server into a client of
//! its own private network (SSRF).
//!
//! Two checks, because a URL's host is only half the story:
//! * [`UrlPolicy::check`] runs when a subscription is created (and again
//!   before each delivery): `https` only, no credentials, no host that
//!   names or is a local-network address.
//! * [`UrlPolicy::check_resolved`] runs on every address a hostname
//!   resolves to, so a public name pointing at a private address (or
//!   re-pointed there later) is refused before any connection.
//!
//! The one exception, for development, is plain `http` (or `https`) to
//! `localhost`, `127.0.0.x` or `[::1]` when
//! [`UrlPolicy::allow_insecure_local`] is set.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The longest webhook URL accepted, in bytes: far more than a real
/// endpoint needs, and it bounds what every subscription stores and sends.
pub const MAX_URL_LEN: usize = 2048;

/// Names that only ever mean something on the local host or network; a
/// name ending in one of these (or equal to it) is refused.
const LOCAL_NAME_SUFFIXES: &[&str] =
    &["localhost", "localdomain", "local", "internal", "home.arpa"];

/// Which webhook targets are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Allows webhooks to `localhost`, `127.0.0.x` and `[::1]`, over plain
    /// `http` too: for development and tests, never for production.
    pub allow_insecure_local: bool,
}

/// A webhook URL that passed [`UrlPolicy::check`]. Its text is the parsed,
/// normalized form (lower-case host, numeric IPv4 spellings made dotted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WebhookUrl {
    url: Url,
}

impl WebhookUrl {
    /// The URL as it will be requested.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub(crate) fn as_url(&self) -> &Url {
        &self.url
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// Why a webhook URL, or an address its host resolved to, was refused.
/// The text is for logs; clients only get `WEBHOOK_URL_REJECTED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRejected {
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("not an absolute URL: {0}")]
    Unparseable(#[from] url::ParseError),
    #[error("scheme {0:?} is not allowed; webhooks use https")]
    Scheme(String),
    #[error("plain http is allowed only to localhost, 127.0.0.x or [::1], in development")]
    InsecureHttp,
    #[error("credentials in the URL (user info) are not allowed")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("host {0:?} names the local host or network")]
    LocalName(String),
    #[error("{addr} is a {range} address")]
    Address { addr: IpAddr, range: &'static str },
}

impl UrlPolicy {
    /// Checks a webhook URL as given at subscription creation. An accepted
    /// URL whose host is a name still has each resolved address checked
    /// with [`UrlPolicy::check_resolved`] when it is delivered to.
    pub fn check(&self, url: &str) -> Result<WebhookUrl, UrlRejected> {
        if url.len() > MAX_URL_LEN {
            return Err(UrlRejected::TooLong);
        }
        let url = Url::parse(url)?;
        let secure = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(UrlRejected::Scheme(other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRejected::UserInfo);
        }
        let local_exception = match url.host() {
            None => return Err(UrlRejected::NoHost),
            Some(Host::Domain(name)) => {
                let local = self.allow_insecure_local && is_localhost(name);
                if !local {
                    check_name(name)?;
                }
                local
            }
            Some(Host::Ipv4(addr)) => self.check_address(true, IpAddr::V4(addr))?,
            Some(Host::Ipv6(addr)) => self.check_address(true, IpAddr::V6(addr))?,
        };
        if !secure && !local_exception {
            return Err(UrlRejected::InsecureHttp);
        }
        Ok(WebhookUrl { url })
    }

    /// Checks one address that `host` (a webhook URL's host name) resolved
    /// to. Only `localhost`, with the development exception on, may resolve
    /// to loopback.
    pub fn check_resolved(&self, host: &str, addr: IpAddr) -> Result<(), UrlRejected> {
        self.check_address(is_localhost(host), addr).map(|_| ())
    }

    /// Refuses a local-network address unless the development exception
    /// covers it: `may_be_local` says the address is an IP literal or came
    /// from resolving `localhost`. Returns whether the exception applied.
    fn check_address(&self, may_be_local: bool, addr: IpAddr) -> Result<bool, UrlRejected> {
        if self.allow_insecure_local && may_be_local && is_local_exception(addr) {
            return Ok(true);
        }
        match blocked_range(addr) {
            Some(range) => Err(UrlRejected::Address { addr, range }),
            None => Ok(false),
        }
    }
}

/// The addresses the development exception allows: `127.0.0.x` and `::1`.
fn is_local_exception(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => in_v4_prefix(v4, Ipv4Addr::new(127, 0, 0, 0), 24),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// `localhost`, with or without the root's trailing dot.
fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
}

/// Refuses host names that mean the local host or network: special-use
/// names, and single labels, which resolve through local search domains.
fn check_name(name: &str) -> Result<(), UrlRejected> {
    let trimmed = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let local = !trimmed.contains('.')
        || LOCAL_NAME_SUFFIXES.iter().any(|suffix| {
            trimmed == *suffix
                || trimmed
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.'))
        });
    if local {
        Err(UrlRejected::LocalName(name.to_owned()))
    } else {
        Ok(())
    }
}

/// The kind of non-public address `addr` is, if it is one.
fn blocked_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

/// IPv4 ranges that are not public unicast (IANA special-purpose registry).
const BLOCKED_V4: &[(Ipv4Addr, u8, &str)] = &[
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "\"this network\" (unspecified)",
    ),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (RFC 1918)"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared (carrier-grade NAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    // Includes the cloud metadata endpoint, 169.254.169.254.
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (RFC 1918)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignment"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (RFC 1918)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    // Includes the limited broadcast address, 255.255.255.255.
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

fn blocked_v4(addr: Ipv4Addr) -> Option<&'static str> {
    BLOCKED_V4
        .iter()
        .find(|(net, len, _)| in_v4_prefix(addr, *net, *len))
        .map(|(_, _, range)| *range)
}

/// IPv6 ranges inside global unicast (2000::/3) that are not public.
const BLOCKED_V6_GLOBAL: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    // Teredo, benchmarking, ORCHID and other protocol ranges.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignment",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
];

/// IPv6 ranges outside global unicast, named for the logs; anything else
/// there is reported as reserved.
const NAMED_V6_LOCAL: &[(Ipv6Addr, u8, &str)] = &[
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn blocked_v6(addr: Ipv6Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some("unspecified");
    }
    if addr.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address reach that address: judge it.
    if let Some(v4) = embedded_v4(addr) {
        return blocked_v4(v4);
    }
    let global_unicast = in_v6_prefix(addr, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
    let table = if global_unicast {
        BLOCKED_V6_GLOBAL
    } else {
        NAMED_V6_LOCAL
    };
    let named = table
        .iter()
        .find(|(net, len, _)| in_v6_prefix(addr, *net, *len))
        .map(|(_, _, range)| *range);
    if global_unicast {
        named
    } else {
        Some(named.unwrap_or("reserved"))
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 well-known prefix
/// (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`) address.
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = addr.to_bits();
    let low32 = Ipv4Addr::from_bits(bits as u32);
    if in_v6_prefix(addr, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
        || in_v6_prefix(addr, Ipv6Addr::UNSPECIFIED, 96)
        || in_v6_prefix(addr, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
    {
        return Some(low32);
    }
    if in_v6_prefix(addr, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    None
}

fn in_v4_prefix(addr: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    addr.to_bits() & mask == net.to_bits() & mask
}

fn in_v6_prefix(addr: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    addr.to_bits() & mask == net.to_bits() & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: UrlPolicy = UrlPolicy {
        allow_insecure_local: false,
    };
    const DEV: UrlPolicy = UrlPolicy {
        allow_insecure_local: true,
    };

    #[test]
    fn public_https_urls_are_accepted() {
        for url in [
            "https://example.com/hook",
            "https://worker.example/hooks?x=1",
            "https://Example.COM:8443/a/b",
            "https://93.184.215.14/hook",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hook",
            // A public IPv4 address in its IPv4-mapped IPv6 form.
            "https://[::ffff:93.184.215.14]/hook",
        ] {
            for policy in [STRICT, DEV] {
                assert!(
                    policy.check(url).is_ok(),
                    "{url} should pass with {policy:?}"
                );
            }
        }
    }

    #[test]
    fn accepted_urls_are_normalized() {
        let url = STRICT.check("https://Example.COM/hook").unwrap();
        assert_eq!(url.as_str(), "https://example.com/hook");
        assert_eq!(url.to_string(), url.as_str());
    }

    #[test]
    fn local_and_private_targets_are_rejected() {
        for url in [
            // What the conformance suite sends.
            "http://10.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://10.255.255.255/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://100.64.0.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://169.254.1.1/",
            "https://0.0.0.0/",
            "https://0.1.2.3/",
            "https://255.255.255.255/",
            "https://224.0.0.1/",
            "https://240.0.0.1/",
            "https://192.0.2.1/",
            "https://198.18.0.1/",
            "https://198.51.100.1/",
            "https://203.0.113.1/",
            "https://192.0.0.8/",
            "https://127.0.0.1/",
            "https://127.1.2.3/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fd00::1]/",
            "https://[fc00::1]/",
            "https://[fe80::1]/",
            "https://[fec0::1]/",
            "https://[ff02::1]/",
            "https://[100::1]/",
            "https://[2001:db8::1]/",
            "https://[3fff::1]/",
            "https://[2001::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::10.0.0.1]/",
            "https://[64:ff9b::a00:1]/",
            "https://[64:ff9b::7f00:1]/",
            "https://[64:ff9b:1::1]/",
            "https://[2002:a00:1::1]/",
            "https://[5f00::1]/",
            // Other spellings of 127.0.0.1, as WHATWG parsers read them.
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
            "https://0x7f000001/",
            "https://127.1/",
            // Percent-encoded host.
            "https://%31%30.0.0.1/",
            // The host is after the `@`.
            "https://good.com@10.0.0.1/",
            // Names that only mean the local host or network.
            "https://localhost/",
            "https://LOCALHOST./",
            "https://app.localhost/",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://foo.internal./",
            "https://printer.local/",
            "https://router.home.arpa/",
            "https://localhost.localdomain/",
            "https://intranet/",
        ] {
            assert!(STRICT.check(url).is_err(), "{url} should be rejected");
        }
    }

    #[test]
    fn the_development_exception_allows_loopback_only() {
        for url in [
            "http://127.0.0.1:8080/x",
            "http://127.0.0.200/x",
            "http://localhost:1/x",
            "http://LocalHost/x",
            "http://[::1]:9000/x",
            "https://localhost/x",
            "https://127.0.0.1/x",
        ] {
            assert!(DEV.check(url).is_ok(), "{url} should pass in development");
            assert!(STRICT.check(url).is_err(), "{url} should be rejected");
        }
        for url in [
            "http://10.0.0.1/hook",
            "http://127.0.1.1/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://app.localhost/x",
            "http://192.168.0.10/x",
            "https://169.254.169.254/",
            "http://example.com/hook",
        ] {
            assert!(
                DEV.check(url).is_err(),
                "{url} should be rejected in development"
            );
        }
    }

    #[test]
    fn rejections_say_why() {
        let cases: &[(&str, UrlRejected)] = &[
            ("ftp://example.com/", UrlRejected::Scheme("ftp".into())),
            ("file:///etc/passwd", UrlRejected::Scheme("file".into())),
            ("http://example.com/", UrlRejected::InsecureHttp),
            ("https://user:pw@example.com/", UrlRejected::UserInfo),
            ("https://good.com@example.com/", UrlRejected::UserInfo),
            ("https://:pw@example.com/", UrlRejected::UserInfo),
            (
                "https://10.0.0.1/",
                UrlRejected::Address {
                    addr: "10.0.0.1".parse().unwrap(),
                    range: "private (RFC 1918)",
                },
            ),
            (
                "https://169.254.169.254/",
                UrlRejected::Address {
                    addr: "169.254.169.254".parse().unwrap(),
                    range: "link-local",
                },
            ),
            (
                "https://metadata.google.internal/",
                UrlRejected::LocalName("metadata.google.internal".into()),
            ),
        ];
        let loopback = UrlRejected::Address {
            addr: "127.0.0.1".parse().unwrap(),
            range: "loopback",
        };
        for url in [
            "https://2130706433/",
            "https://0x7f.1/",
            "https://0177.0.0.1/",
        ] {
            assert_eq!(STRICT.check(url).as_ref(), Err(&loopback), "{url}");
        }
        for (url, expected) in cases {
            assert_eq!(STRICT.check(url).as_ref(), Err(expected), "{url}");
        }
        assert!(matches!(
            STRICT.check("not a url"),
            Err(UrlRejected::Unparseable(_))
        ));
        assert!(matches!(
            STRICT.check("/relative"),
            Err(UrlRejected::Unparseable(_))
        ));
        assert!(matches!(
            STRICT.check("https://"),
            Err(UrlRejected::Unparseable(_))
        ));
    }

    #[test]
    fn long_urls_are_rejected() {
        let base = "https://example.com/";
        let fits = format!("{base}{}", "a".repeat(MAX_URL_LEN - base.len()));
        assert!(STRICT.check(&fits).is_ok());
        let over = format!("{fits}a");
        assert_eq!(STRICT.check(&over), Err(UrlRejected::TooLong));
    }

    #[test]
    fn resolved_addresses_must_be_public() {
        let refused = [
            "10.0.0.1",
            "172.20.1.1",
            "192.168.1.1",
            "100.100.100.100",
            "169.254.169.254",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::c0a8:101",
        ];
        for addr in refused {
            let addr: IpAddr = addr.parse().unwrap();
            for policy in [STRICT, DEV] {
                assert!(
                    policy.check_resolved("hooks.example.com", addr).is_err(),
                    "{addr} for a public name, {policy:?}"
                );
            }
        }
        for addr in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "64:ff9b::5db8:d70e",
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(
                STRICT.check_resolved("hooks.example.com", addr),
                Ok(()),
                "{addr}"
            );
        }
    }

    #[test]
    fn only_localhost_may_resolve_to_loopback_in_development() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        for addr in [v4, v6] {
            assert_eq!(DEV.check_resolved("localhost", addr), Ok(()));
            assert_eq!(DEV.check_resolved("localhost.", addr), Ok(()));
            assert!(STRICT.check_resolved("localhost", addr).is_err());
            assert!(DEV.check_resolved("rebind.example.com", addr).is_err());
        }
        // The exception is loopback, not the rest of the local network.
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(DEV.check_resolved("localhost", private).is_err());
    }
}
