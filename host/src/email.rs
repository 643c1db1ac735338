//! Email addresses as the host checks, compares and sends them. Vendors match addresses without
//! regard to case and accept internationalised domains only in their ASCII (`xn--`) form, so an
//! address is sent with its domain in that form, and an export knows each person by the
//! address lowercased (its sync key). An address that no email-marketing vendor accepts is
//! refused here, before any vendor call is spent on it; finer rules stay the vendor's to judge.

/// The longest address SMTP carries (RFC 5321: a 256-octet path, less its angle brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
/// The longest local part (RFC 5321).
const MAX_LOCAL_LEN: usize = 64;

/// An address ready to send, and the key an export knows the person by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As the profile has it, trimmed, with its domain lowercased and, when internationalised,
    /// in its `xn--` form (the local part keeps its case: a mailbox may depend on it).
    pub send: String,
    /// `send`, lowercased: the same person whatever the case.
    pub key: String,
}

/// Why a profile's email cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// The field is empty.
    Missing,
    /// Not an address any vendor accepts; the reason, in words.
    Invalid(String),
}

/// The address of a profile's email field, or why it has none that can be sent.
pub fn address(raw: &str) -> Result<Address, Unusable> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(Unusable::Missing);
    }
    let invalid = |why: &str| Err(Unusable::Invalid(why.to_string()));
    if let Some(c) = trimmed
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return invalid(&match c {
            ' ' => "it contains a space".to_string(),
            c => format!("it contains the character {}", c.escape_default()),
        });
    }
    let ats = trimmed.matches('@').count();
    let Some((local, domain)) = trimmed.rsplit_once('@').filter(|_| ats == 1) else {
        return invalid(&match ats {
            0 => "it has no @".to_string(),
            n => format!("it has {n} @ signs"),
        });
    };
    check_local(local).map_err(Unusable::Invalid)?;
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        match idna::domain_to_ascii(domain) {
            Ok(ascii) => ascii,
            Err(_) => return invalid("its domain is not a name IDNA can spell"),
        }
    };
    check_domain(&ascii).map_err(Unusable::Invalid)?;
    let send = format!("{local}@{ascii}");
    if send.len() > MAX_ADDRESS_LEN {
        return invalid(&format!(
            "it is {} bytes long; addresses end at {MAX_ADDRESS_LEN}",
            send.len()
        ));
    }
    let key = send.to_lowercase();
    Ok(Address { send, key })
}

/// The local part: not empty, at most 64 bytes, dots only between other characters, none of
/// the characters that only a quoted local part may hold (which vendors refuse).
fn check_local(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("nothing comes before its @".into());
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(format!(
            "the part before its @ is {} bytes long; it ends at {MAX_LOCAL_LEN}",
            local.len()
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("the part before its @ has a dot at an end or two in a row".into());
    }
    if let Some(c) = local.chars().find(|c| "\"(),:;<>[]\\".contains(*c)) {
        return Err(format!("the part before its @ contains `{c}`"));
    }
    Ok(())
}

/// The domain, in ASCII: at least two labels of letters, digits and inner hyphens, at most
/// 63 bytes each, under a top-level domain that is not all digits (an IP address is no domain).
fn check_domain(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(format!("its domain `{domain}` has no dot"));
    }
    for label in &labels {
        let fine = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !fine {
            return Err(format!("its domain `{domain}` is not a valid name"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("its domain `{domain}` is an address, not a name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_case_insensitively_and_sent_with_ascii_domains() {
        let a = address("  Ada.Lovelace@Example.COM\n").unwrap();
        assert_eq!(a.send, "Ada.Lovelace@example.com");
        assert_eq!(a.key, "ada.lovelace@example.com");
        let b = address("zoë@bücher.example").unwrap();
        assert_eq!(b.send, "zoë@xn--bcher-kva.example");
        assert_eq!(b.key, "zoë@xn--bcher-kva.example");
        assert_eq!(
            address("info@Bücher.example").unwrap().key,
            address("INFO@bücher.EXAMPLE").unwrap().key
        );
        assert_eq!(
            address("ivan@пример.рф").unwrap().send,
            "ivan@xn--e1afmkfd.xn--p1ai"
        );
        for fine in [
            "a+tag@x.io",
            "o'brien@mail.example.co.uk",
            "first.last@sub-domain.example",
            "x@x.museum",
            "_@x.io",
        ] {
            assert!(address(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn what_no_vendor_accepts_is_refused_with_the_reason() {
        assert_eq!(address("   "), Err(Unusable::Missing));
        let why = |raw: &str| match address(raw) {
            Err(Unusable::Invalid(why)) => why,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(why("no-at-sign.example.com"), "it has no @");
        assert_eq!(why("a@@x.io"), "it has 2 @ signs");
        assert_eq!(why("Ada Lovelace@x.io"), "it contains a space");
        assert_eq!(why("a\u{7}b@x.io"), "it contains the character \\u{7}");
        assert_eq!(why("@x.io"), "nothing comes before its @");
        assert_eq!(
            why(".a@x.io"),
            "the part before its @ has a dot at an end or two in a row"
        );
        assert_eq!(
            why("a..b@x.io"),
            "the part before its @ has a dot at an end or two in a row"
        );
        assert_eq!(
            why("\"quoted\"@x.io"),
            "the part before its @ contains `\"`"
        );
        assert_eq!(why("a@localhost"), "its domain `localhost` has no dot");
        assert_eq!(why("a@x..io"), "its domain `x..io` is not a valid name");
        assert_eq!(why("a@-x.io"), "its domain `-x.io` is not a valid name");
        assert_eq!(why("a@x_y.io"), "its domain `x_y.io` is not a valid name");
        assert_eq!(
            why("a@1.2.3.4"),
            "its domain `1.2.3.4` is an address, not a name"
        );
        assert_eq!(
            why("a@[1.2.3.4]"),
            "its domain `[1.2.3.4]` is not a valid name"
        );
        assert!(why(&format!("{}@x.io", "a".repeat(65))).contains("65 bytes long"));
        let long = format!("a@{}.io", vec!["b".repeat(60); 5].join("."));
        assert!(
            why(&long).contains("addresses end at 254"),
            "{}",
            why(&long)
        );
    }
}
