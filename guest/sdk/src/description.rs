//! [`Description`]: what `describe` returns, built a line a fact instead of a struct literal.

use crate::{
    AuthScheme, ConfigField, ConnectorInfo, ContactField, LeaveAction, MAX_EMAIL_LENGTH,
    RateWindow, RequestClass,
};

/// Builds a [`ConnectorInfo`]. It starts with the required `email` field, bearer
/// authentication, batches of one, and no settings, leave actions or vendor limits.
///
/// ```
/// use cdp_connector_sdk::{AuthScheme, Description};
/// let info = Description::new("acme-mail", "Acme Mail", "1.0.0")
///     .base_url("https://api.acme-mail.example/v2")
///     .auth(AuthScheme::Bearer)
///     .setting("list-id", "List ID", "Lists -> Settings -> API ID.")
///     .field("first-name", "First name", 100)
///     .max_batch_size(500)
///     .build();
/// assert_eq!(info.hosts, ["api.acme-mail.example"]);
/// ```
#[derive(Debug, Clone)]
pub struct Description(ConnectorInfo);

impl Description {
    /// A connector with this id (lowercase with dashes), display name and version.
    pub fn new(id: &str, display_name: &str, version: &str) -> Description {
        Description(ConnectorInfo {
            id: id.into(),
            display_name: display_name.into(),
            version: version.into(),
            default_base_url: String::new(),
            hosts: vec![],
            auth: AuthScheme::Bearer,
            config_fields: vec![],
            contact_fields: vec![ContactField::new("email", "Email", true, MAX_EMAIL_LENGTH)],
            custom_fields: false,
            custom_field_max_length: 0,
            leave_actions: vec![],
            max_batch_size: 1,
            max_concurrent_requests: 0,
            rate_windows: vec![],
            erasure: None,
        })
    }

    /// The production API's base URL (`https`, may hold `{dc}` for a data centre). Its host
    /// joins the allowed hosts, `{dc}` as a wildcard label (`*.api.mailchimp.com`).
    pub fn base_url(mut self, url: &str) -> Description {
        self.0.default_base_url = url.into();
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or_default()
            .replace("{dc}", "*");
        self = self.host(&host);
        self
    }

    /// Another host the connector may reach (exact, or with one leading `*.` label).
    pub fn host(mut self, host: &str) -> Description {
        if !host.is_empty() && !self.0.hosts.iter().any(|h| h == host) {
            self.0.hosts.push(host.into());
        }
        self
    }

    /// How the host applies the connection's secret.
    pub fn auth(mut self, auth: AuthScheme) -> Description {
        self.0.auth = auth;
        self
    }

    /// A setting every export must give.
    pub fn setting(self, key: &str, label: &str, help: &str) -> Description {
        self.config_field(key, label, help, true)
    }

    /// A setting an export may give.
    pub fn optional_setting(self, key: &str, label: &str, help: &str) -> Description {
        self.config_field(key, label, help, false)
    }

    fn config_field(mut self, key: &str, label: &str, help: &str, required: bool) -> Description {
        self.0.config_fields.push(ConfigField {
            key: key.into(),
            label: label.into(),
            help: help.into(),
            required,
        });
        self
    }

    /// A contact field exports may map; `max_length` in characters, 0 for no published limit.
    pub fn field(mut self, key: &str, label: &str, max_length: u32) -> Description {
        self.0
            .contact_fields
            .push(ContactField::new(key, label, false, max_length));
        self
    }

    /// Exports may also map the vendor list's own fields, values up to `max_length` characters
    /// (0: no published limit); `validate` should check they exist.
    pub fn custom_fields(mut self, max_length: u32) -> Description {
        self.0.custom_fields = true;
        self.0.custom_field_max_length = max_length;
        self
    }

    /// Something the connector can do to contacts who left an export's segment.
    pub fn leave_action(
        mut self,
        id: &str,
        label: &str,
        help: &str,
        reversible: bool,
    ) -> Description {
        self.0
            .leave_actions
            .push(LeaveAction::new(id, label, help, reversible));
        self
    }

    /// The leave action declared last takes at most `size` leavers a call (1: the host records
    /// each leaver as soon as the vendor acknowledged it; the default is the max batch size).
    pub fn leave_batch_size(mut self, size: u32) -> Description {
        if let Some(action) = self.0.leave_actions.last_mut() {
            action.batch_size = size;
        }
        self
    }

    /// The connector can erase people at the vendor with its `erase_contacts`: what that does,
    /// in a sentence (e.g. "permanently deletes the member and their data").
    pub fn erasure(mut self, what: &str) -> Description {
        self.0.erasure = Some(what.into());
        self
    }

    /// The most contacts one call takes.
    pub fn max_batch_size(mut self, size: u32) -> Description {
        self.0.max_batch_size = size;
        self
    }

    /// Requests the vendor allows in flight at once per account (0: no published limit).
    pub fn max_concurrent_requests(mut self, requests: u32) -> Description {
        self.0.max_concurrent_requests = requests;
        self
    }

    /// Requests a second the vendor allows per account: a one-second rate window (0: none).
    pub fn max_requests_per_second(self, requests: u32) -> Description {
        match requests {
            0 => self,
            n => self.rate_window(n, 1),
        }
    }

    /// The vendor allows at most `requests` in any `seconds`, per account, counting all
    /// requests.
    pub fn rate_window(mut self, requests: u32, seconds: u32) -> Description {
        self.0.rate_windows.push(RateWindow {
            requests,
            seconds,
            applies_to: None,
        });
        self
    }

    /// As [`Self::rate_window`], counting only requests with `method` (any when `None`) whose
    /// path, after the base URL's own, starts with `path_prefix`.
    pub fn rate_window_for(
        mut self,
        requests: u32,
        seconds: u32,
        method: Option<&str>,
        path_prefix: &str,
    ) -> Description {
        self.0.rate_windows.push(RateWindow {
            requests,
            seconds,
            applies_to: Some(RequestClass {
                method: method.map(String::from),
                path_prefix: path_prefix.into(),
            }),
        });
        self
    }

    /// The description.
    pub fn build(self) -> ConnectorInfo {
        self.0
    }
}
