//! Which addresses the broker may dial. Names are resolved by the broker itself (through a
//! [`Resolve`] that tests replace) and every address is checked before a socket is opened, so
//! a declared host whose name points at loopback, a private network or a cloud metadata
//! service is refused, and DNS rebinding gains nothing: each new connection is checked again.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;

/// Resolves a host name to the addresses the broker may try, in order.
pub trait Resolve: Send + Sync {
    /// The addresses of `host` (a DNS name, never an IP literal).
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A resolver shared by the broker's connections.
pub type SharedResolver = Arc<dyn Resolve>;

/// Why an address is not one the broker dials for a vendor, or `None` for a global unicast
/// address. IPv4 addresses carried inside IPv6 ones (mapped, 6to4, NAT64) are judged by the
/// IPv4 address they carry.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// Whether the address is a loopback one (127.0.0.0/8, ::1, or ::ffff:127.x.y.z).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (\"this network\") address",
        (127, _, _) => "a loopback address",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (169, 254, _) => "a link-local address (cloud metadata services live here)",
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (192, 88, 99) => "a 6to4 relay address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (255, 255, 255) if ip.is_broadcast() => "the broadcast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("the unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // 64:ff9b::/96, NAT64: the IPv4 address sits in the last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded_v4(s[6], s[7]));
    }
    // 2002::/16, 6to4: the IPv4 address follows the prefix.
    if s[0] == 0x2002 {
        return v4_reason(embedded_v4(s[1], s[2]));
    }
    Some(match s[0] {
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0x0000..=0x00ff => "a reserved address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only address",
        0x2001 if s[1] < 0x0200 => "an IETF protocol address (Teredo and others)",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        0x3fff if s[1] < 0x1000 => "a documentation address",
        0xfc00..=0xfdff => "a unique-local (private) address",
        0xfe80..=0xfebf => "a link-local address",
        0xfec0..=0xfeff => "a site-local address",
        0xff00..=0xffff => "a multicast address",
        // Only 2000::/3 is global unicast.
        0x2000..=0x3fff => return None,
        _ => "a reserved address",
    })
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
}

/// An address the broker refused to dial, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRefused {
    pub host: String,
    pub address: IpAddr,
    pub reason: &'static str,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.parse::<IpAddr>().is_ok() || self.host.starts_with('[') {
            write!(f, "{} is {}", self.host, self.reason)
        } else {
            write!(
                f,
                "{} resolves to {}, {}",
                self.host, self.address, self.reason
            )
        }
    }
}

impl std::error::Error for AddressRefused {}

/// Which addresses one connection's requests may reach: global unicast addresses only, except
/// the loopback host and port of a base URL an administrator set (a vendor simulator).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialPolicy {
    /// The administrator's loopback base URL: host (lowercase, without brackets) and port.
    pub loopback: Option<(String, u16)>,
}

impl DialPolicy {
    /// Checks one address `host` resolved to before a socket is opened to it.
    pub fn check(&self, host: &str, port: u16, address: IpAddr) -> Result<(), AddressRefused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let excepted = self
            .loopback
            .as_ref()
            .is_some_and(|(h, p)| h.eq_ignore_ascii_case(bare) && *p == port);
        if excepted && is_loopback(address) {
            return Ok(());
        }
        match forbidden_reason(address) {
            None => Ok(()),
            Some(reason) => Err(AddressRefused {
                host: host.to_string(),
                address,
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(text: &str) -> Option<&'static str> {
        forbidden_reason(text.parse().unwrap())
    }

    #[test]
    fn only_global_unicast_addresses_are_dialled() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "104.18.2.3",
            "2606:4700::1111",
            "2a00:1450:4001:81c::200e",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
        ] {
            assert_eq!(reason(public), None, "{public}");
        }
        for (forbidden, words) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("169.254.169.254", "link-local"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "reserved"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:a00:1::", "private"),
            ("2001::1", "Teredo"),
            ("2001:db8::1", "documentation"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("100::", "discard"),
            ("4000::1", "reserved"),
        ] {
            let got = reason(forbidden).unwrap_or_else(|| panic!("{forbidden} was allowed"));
            assert!(got.contains(words), "{forbidden}: {got}");
        }
    }

    #[test]
    fn loopback_is_dialled_only_for_the_administrators_base_url() {
        let policy = DialPolicy {
            loopback: Some(("127.0.0.1".into(), 4000)),
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(policy.check("127.0.0.1", 4000, lo).is_ok());
        assert!(policy.check("127.0.0.1", 4001, lo).is_err(), "another port");
        let refused = policy.check("api.vendor.com", 4000, lo).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "api.vendor.com resolves to 127.0.0.1, a loopback address"
        );
        // The exception is for loopback only, even on the administrator's host and port.
        assert!(
            policy
                .check("127.0.0.1", 4000, "10.0.0.1".parse().unwrap())
                .is_err()
        );
        let localhost = DialPolicy {
            loopback: Some(("localhost".into(), 8080)),
        };
        assert!(
            localhost
                .check("localhost", 8080, "::1".parse().unwrap())
                .is_ok()
        );
        assert!(DialPolicy::default().check("localhost", 8080, lo).is_err());
    }
}
