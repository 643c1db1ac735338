//! Where a connection's requests may go, decided by the operator and never by a connector.
//!
//! A connector declares the hosts it needs in `describe()`. Each must be a DNS name under a
//! registrable domain of the Public Suffix List (no IP literal in any notation, no userinfo,
//! port or path, no empty label or trailing dot), with at most one leading `*.` wildcard that
//! stays below a registrable domain; its default base URL must be `https` on one of those
//! hosts. Plain `http` and loopback exist only for a base URL an administrator set on the
//! connection (a vendor simulator).

use anyhow::{Result, bail};
use http::uri::Scheme;

use super::address::DialPolicy;

/// Checks a host a connector declares; the error says what is wrong with it.
pub fn check_declared_host(host: &str) -> Result<(), String> {
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if name.is_empty() || name == "*" {
        return Err("is empty or a bare wildcard".into());
    }
    if name.contains('*') {
        return Err("uses a wildcard other than one leading `*.`".into());
    }
    if !name.is_ascii() {
        return Err("is not ASCII (declare the punycode form, xn--...)".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        let what = match c {
            '@' => "has a user name (userinfo)".to_string(),
            ':' => "has a port or is an IPv6 address".to_string(),
            '/' | '?' | '#' => "has a path".to_string(),
            '[' | ']' => "is an IPv6 address".to_string(),
            c => format!("has the character {c:?}, which host names cannot contain"),
        };
        return Err(what);
    }
    if name.ends_with('.') {
        return Err("ends with a dot".into());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err("has an empty label".into());
    }
    if looks_like_ip(&labels) {
        return Err("is an IP address (in any notation), not a DNS name".into());
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    if let Some(label) = labels
        .iter()
        .find(|l| l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(format!(
            "has the label `{label}`, which is too long or starts or ends with a dash"
        ));
    }
    let lower = name.to_ascii_lowercase();
    let known_suffix = psl::suffix(lower.as_bytes()).is_some_and(|s| s.is_known());
    if !known_suffix {
        return Err(
            "is not under a public suffix (names such as localhost or *.internal reach private hosts)"
                .into(),
        );
    }
    if psl::domain(lower.as_bytes()).is_none() {
        return Err(if wildcard {
            format!("would cover every domain under the public suffix `{lower}`")
        } else {
            format!("is the public suffix `{lower}`, not a host")
        });
    }
    Ok(())
}

/// Whether dot-separated labels spell an IPv4 address in some notation the resolver accepts
/// (`127.0.0.1`, `127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`): the last label is a number.
fn looks_like_ip(labels: &[&str]) -> bool {
    let last = labels.last().copied().unwrap_or_default();
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || last.bytes().all(|b| b.is_ascii_digit())
}

/// One host pattern of an allow-list, with the scheme and port it may be reached on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Lowercase; `*.` followed by a suffix for a wildcard.
    pattern: String,
    scheme: Scheme,
    port: u16,
}

impl Destination {
    /// A declared host: HTTPS on port 443.
    pub fn https(pattern: &str) -> Destination {
        Destination {
            pattern: pattern.to_ascii_lowercase(),
            scheme: Scheme::HTTPS,
            port: 443,
        }
    }

    /// Whether a request to `scheme://host:port` is covered.
    pub fn permits(&self, scheme: &Scheme, host: &str, port: u16) -> bool {
        if *scheme != self.scheme || port != self.port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match self.pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            None => host == self.pattern,
        }
    }
}

/// Checks a connector's default base URL (with `{dc}` standing for a data centre): `https`,
/// on one of its declared hosts, on the standard port, without userinfo.
pub fn check_default_base_url(url: &str, hosts: &[String]) -> Result<(), String> {
    let uri: http::Uri = url
        .replace("{dc}", "dc")
        .parse()
        .map_err(|_| "is not a URL".to_string())?;
    if uri.scheme() != Some(&Scheme::HTTPS) {
        return Err("is not https".into());
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err("has a user name (userinfo)".into());
    }
    if uri.port_u16().is_some_and(|p| p != 443) {
        return Err("names a port other than 443".into());
    }
    let host = uri.host().unwrap_or_default();
    if !hosts
        .iter()
        .any(|h| Destination::https(h).permits(&Scheme::HTTPS, host, 443))
    {
        return Err(format!(
            "is on `{host}`, which is not among its declared hosts"
        ));
    }
    Ok(())
}

/// Where one connection's requests may go, and which addresses may be dialled for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    destinations: Vec<Destination>,
    dial: DialPolicy,
}

impl AllowList {
    /// Nothing at all (for calls that must not use the network, such as `describe`).
    pub fn nothing() -> AllowList {
        AllowList {
            destinations: vec![],
            dial: DialPolicy::default(),
        }
    }

    /// The connector's declared hosts, over HTTPS, at public addresses only.
    pub fn declared(hosts: &[String]) -> AllowList {
        AllowList {
            destinations: hosts.iter().map(|h| Destination::https(h)).collect(),
            dial: DialPolicy::default(),
        }
    }

    /// The base URL an administrator set on the connection. A loopback one (a simulator) is
    /// the only way `http` and loopback addresses are ever reached, and only its own port.
    /// Any other must be one of the connector's declared hosts over HTTPS.
    pub fn for_base_url(uri: &http::Uri, declared: &[String]) -> Result<AllowList> {
        let Some(scheme) = uri.scheme().cloned() else {
            bail!("it has no scheme (http:// or https://)");
        };
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            bail!("its scheme `{scheme}` is neither http nor https");
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            bail!(
                "it contains a user name or password; credentials belong in the connection's secret"
            );
        }
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        if host.is_empty() {
            bail!("it has no host");
        }
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == Scheme::HTTP { 80 } else { 443 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if is_loopback_name(&bare) {
            return Ok(AllowList {
                destinations: vec![Destination {
                    pattern: host,
                    scheme,
                    port,
                }],
                dial: DialPolicy {
                    loopback: Some((bare, port)),
                },
            });
        }
        let list = AllowList::declared(declared);
        if !list
            .destinations
            .iter()
            .any(|d| d.permits(&scheme, &host, port))
        {
            bail!(
                "it is outside the hosts the connector may reach ({}); only those, over https, or a loopback simulator may be used",
                declared.join(", ")
            );
        }
        Ok(list)
    }

    /// Checks a request's URL; the error says why it may not go out.
    pub fn check(&self, uri: &http::Uri) -> Result<(), String> {
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let Some(authority) = uri.authority() else {
            return Err("a request without a host".into());
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "a request to {authority} with a user name in its URL"
            ));
        }
        let host = authority.host();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == Scheme::HTTP { 80 } else { 443 });
        if self
            .destinations
            .iter()
            .any(|d| d.permits(&scheme, host, port))
        {
            Ok(())
        } else {
            Err(format!(
                "a request to {scheme}://{host}:{port}, outside the connection's allowed hosts"
            ))
        }
    }

    /// The addresses the requests may reach.
    pub fn dial_policy(&self) -> &DialPolicy {
        &self.dial
    }
}

/// Whether a URL host (without brackets) names this machine's loopback interface.
pub fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(super::address::is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_hosts_are_dns_names_under_a_registrable_domain() {
        for ok in [
            "api.createsend.com",
            "*.api.mailchimp.com",
            "mailchimp.com",
            "*.mailchimp.com",
            "api.example.co.uk",
            "*.example.co.uk",
            "xn--bcher-kva.de",
            "API.Vendor.IO",
        ] {
            assert_eq!(check_declared_host(ok), Ok(()), "{ok}");
        }
        for (bad, words) in [
            ("127.0.0.1", "IP address"),
            ("169.254.169.254", "IP address"),
            ("10.0.0.1", "IP address"),
            ("2130706433", "IP address"),
            ("127.1", "IP address"),
            ("0x7f.1", "IP address"),
            ("0177.0.0.1", "IP address"),
            ("0.0.0.0", "IP address"),
            ("[::1]", "IPv6"),
            ("::1", "port or is an IPv6"),
            ("localhost", "public suffix"),
            ("api.localhost", "public suffix"),
            ("metadata.google.internal", "public suffix"),
            ("printer.local", "public suffix"),
            ("*", "bare wildcard"),
            ("*.", "bare wildcard"),
            ("", "empty"),
            ("*.com", "every domain under the public suffix `com`"),
            ("*.co.uk", "public suffix `co.uk`"),
            ("com", "is the public suffix `com`"),
            ("*.*.example.com", "wildcard"),
            ("api*.example.com", "wildcard"),
            ("user@api.example.com", "user name"),
            ("user:pw@api.example.com", "port or is an IPv6"),
            ("api.example.com:8443", "port"),
            ("api.example.com/path", "path"),
            ("api..example.com", "empty label"),
            (".example.com", "empty label"),
            ("api.example.com.", "ends with a dot"),
            ("-api.example.com", "dash"),
            ("bücher.de", "punycode"),
            ("api example.com", "character"),
            ("api_x.example.com", "character"),
        ] {
            let err = check_declared_host(bad).expect_err(bad);
            assert!(err.contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn wildcards_match_one_or_more_labels_only_on_their_scheme_and_port() {
        let exact = Destination::https("api.createsend.com");
        let wild = Destination::https("*.api.mailchimp.com");
        let https = Scheme::HTTPS;
        assert!(exact.permits(&https, "API.createsend.com", 443));
        assert!(!exact.permits(&https, "evil-api.createsend.com", 443));
        assert!(!exact.permits(&Scheme::HTTP, "api.createsend.com", 80));
        assert!(!exact.permits(&https, "api.createsend.com", 8443));
        assert!(wild.permits(&https, "us21.api.mailchimp.com", 443));
        assert!(!wild.permits(&https, "api.mailchimp.com", 443));
        assert!(!wild.permits(&https, "us21.api.mailchimp.com.evil.com", 443));
        assert!(!wild.permits(&https, "evilapi.mailchimp.com", 443));
    }

    #[test]
    fn a_default_base_url_is_https_on_a_declared_host() {
        let hosts = vec!["*.api.mailchimp.com".to_string()];
        assert_eq!(
            check_default_base_url("https://{dc}.api.mailchimp.com/3.0", &hosts),
            Ok(())
        );
        for (bad, words) in [
            ("http://127.0.0.1:9/api", "not https"),
            ("https://127.0.0.1:9/api", "port other than 443"),
            ("https://127.0.0.1/api", "not among its declared hosts"),
            ("http://us1.api.mailchimp.com/3.0", "not https"),
            ("https://us1.api.mailchimp.com:8443/3.0", "port"),
            ("https://x@us1.api.mailchimp.com/3.0", "user name"),
            ("https://api.mailchimp.com.evil.com/3.0", "not among"),
            ("not a url", "not a URL"),
        ] {
            let err = check_default_base_url(bad, &hosts).expect_err(bad);
            assert!(err.contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn an_administrators_base_url_is_a_declared_host_or_a_loopback_simulator() {
        let declared = vec!["api.createsend.com".to_string()];
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let sim =
            AllowList::for_base_url(&uri("http://127.0.0.1:4000/api/v3.3"), &declared).unwrap();
        assert_eq!(
            sim.check(&uri("http://127.0.0.1:4000/api/v3.3/x.json")),
            Ok(())
        );
        assert!(
            sim.check(&uri("http://127.0.0.1:4001/x")).is_err(),
            "another port"
        );
        assert!(sim.check(&uri("https://api.createsend.com/x")).is_err());
        assert_eq!(
            sim.dial_policy().loopback,
            Some(("127.0.0.1".to_string(), 4000))
        );
        let v6 = AllowList::for_base_url(&uri("http://[::1]:4000/"), &declared).unwrap();
        assert_eq!(v6.check(&uri("http://[::1]:4000/a")), Ok(()));

        let production =
            AllowList::for_base_url(&uri("https://api.createsend.com/api/v3.3"), &declared)
                .unwrap();
        assert_eq!(production.dial_policy().loopback, None);
        assert!(
            production
                .check(&uri("https://user@api.createsend.com/x"))
                .is_err()
        );
        for bad in [
            "http://api.createsend.com/api",
            "https://10.0.0.5/api",
            "https://evil.example.com/api",
            "ftp://127.0.0.1/",
            "http://user:pw@127.0.0.1:4000/",
        ] {
            assert!(
                AllowList::for_base_url(&uri(bad), &declared).is_err(),
                "{bad}"
            );
        }
    }
}
