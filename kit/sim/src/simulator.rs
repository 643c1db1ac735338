//! [`Simulator`]: what every vendor simulator of the kit offers beyond its own API, so that a
//! conformance check (`connector-host plugins check`) or a test can drive the connector of any
//! vendor the same way: an account with a list ready, and a look at what the vendor holds.
//!
//! To simulate another vendor: serve its API with [`crate::Server::start`] (faults and the
//! request log come with it), keep its records behind the handler, and implement this trait.

use crate::{Listen, LoggedRequest, Server};

/// How a simulated vendor holds one address on the export's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Receives mailings (subscribed, active, or pending their own confirmation).
    Mailable,
    /// Kept out on purpose (unsubscribed, cleaned, bounced, deleted...): the vendor's word.
    KeptOut(String),
    /// On the list but out of its mailings by an export's leave action (archived, untagged...).
    Removed(String),
}

/// A running simulator of one vendor, with one account and one list set up for a check.
pub trait Simulator: Send + Sync {
    /// The id of the connector this vendor's exports use, e.g. `campaign-monitor`.
    fn connector(&self) -> &'static str;
    /// The base URL a connection to the account uses.
    fn base_url(&self) -> String;
    /// A credential the account accepts.
    fn credential(&self) -> String;
    /// Export settings naming the account's list.
    fn export_settings(&self) -> Vec<(String, String)>;
    /// Export settings naming a list the account does not have.
    fn unknown_list_settings(&self) -> Vec<(String, String)>;
    /// Puts `email` on the list as kept out (they unsubscribed by themselves).
    fn keep_out(&self, email: &str);
    /// How the list holds `email`, or `None` when it does not have it.
    fn held(&self, email: &str) -> Option<Held>;
    /// Records on the list for `email` (a faithful vendor never holds two).
    fn records(&self, email: &str) -> usize;
    /// The HTTP server: injected faults, counters.
    fn server(&self) -> &Server;
    /// Every request answered so far.
    fn requests(&self) -> Vec<LoggedRequest>;
    /// What this simulator does that no source settles (its vendor contract marks it
    /// UNCONFIRMED): a connector that relies on it passes here and should be tried against the
    /// real vendor too. The check prints them.
    fn unconfirmed(&self) -> Vec<&'static str> {
        vec![]
    }
}

/// The connectors the kit has a simulator for.
pub const SIMULATED: &[&str] = &["campaign-monitor", "mailchimp", "mailerlite", "brevo"];

/// Starts the kit's simulator for `connector` on a free loopback port, with an account and a
/// list ready; `None` when the kit has no simulator for it.
pub async fn start(connector: &str, listen: Listen) -> Option<anyhow::Result<Box<dyn Simulator>>> {
    let started: anyhow::Result<Box<dyn Simulator>> = match connector {
        "campaign-monitor" => crate::campaign_monitor::ForCheck::start(listen)
            .await
            .map(|s| Box::new(s) as Box<dyn Simulator>),
        "mailchimp" => crate::mailchimp::ForCheck::start(listen)
            .await
            .map(|s| Box::new(s) as Box<dyn Simulator>),
        "mailerlite" => crate::mailerlite::ForCheck::start(listen)
            .await
            .map(|s| Box::new(s) as Box<dyn Simulator>),
        "brevo" => crate::brevo::ForCheck::start(listen)
            .await
            .map(|s| Box::new(s) as Box<dyn Simulator>),
        _ => return None,
    };
    Some(started)
}
