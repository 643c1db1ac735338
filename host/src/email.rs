//! Email addresses as the host compares and sends them. Vendors match addresses without regard to
//! case and accept internationalised domains only in their ASCII (`xn--`) form, so an address is
//! sent with its domain in that form, and an export knows each person by the address lowercased
//! (its sync key). Everything else about validity is the vendor's to judge.

/// An address ready to send, and the key an export knows the person by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// As the profile has it, trimmed, with an internationalised domain in its `xn--` form.
    pub send: String,
    /// `send`, lowercased: the same person whatever the case.
    pub key: String,
}

/// The address of a profile's email field, or `None` when it holds nothing.
pub fn address(raw: &str) -> Option<Address> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let send = match trimmed.rsplit_once('@') {
        Some((local, domain)) if !domain.is_ascii() => match idna::domain_to_ascii(domain) {
            Ok(ascii) => format!("{local}@{ascii}"),
            // Not a domain IDNA can spell: left as it is, for the vendor to refuse with its reason.
            Err(_) => trimmed.to_string(),
        },
        _ => trimmed.to_string(),
    };
    let key = send.to_lowercase();
    Some(Address { send, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_case_insensitively_and_sent_with_ascii_domains() {
        let a = address("  Ada.Lovelace@Example.COM\n").unwrap();
        assert_eq!(a.send, "Ada.Lovelace@Example.COM");
        assert_eq!(a.key, "ada.lovelace@example.com");
        let b = address("zoë@bücher.example").unwrap();
        assert_eq!(b.send, "zoë@xn--bcher-kva.example");
        assert_eq!(b.key, "zoë@xn--bcher-kva.example");
        assert_eq!(
            address("info@Bücher.example").unwrap().key,
            address("INFO@bücher.EXAMPLE").unwrap().key
        );
        assert_eq!(address("   "), None);
        assert_eq!(address("no-at-sign").unwrap().send, "no-at-sign");
    }
}
