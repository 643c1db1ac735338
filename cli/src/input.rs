//! Reading what the operator gives: secrets from the environment, KEY=VALUE lists.

use anyhow::{Context, Result, bail};
use connector_host::Secret;

/// A credential from an environment variable (never from an argument, which other users of
/// the machine can see in the process list).
pub fn read_secret(var: &str, what: &str) -> Result<Secret> {
    std::env::var(var)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(Secret::new)
        .with_context(|| format!("no credential: set the environment variable {var} to {what}"))
}

/// `KEY=VALUE` arguments as pairs.
pub fn parse_settings(args: &[String]) -> Result<Vec<(String, String)>> {
    args.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("setting `{s}` must look like KEY=VALUE, e.g. list-id=..."),
        })
        .collect()
}
