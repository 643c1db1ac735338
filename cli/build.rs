//! Builds the connectors the `connector-host` CLI bundles (`plugins install` writes them into
//! the plugin directory), so a fresh installation has them without a separate build.

fn main() {
    let dir = guest_builder::build(&["campaign-monitor-connector", "mailchimp-connector"]);
    println!(
        "cargo:rustc-env=CONNECTOR_HOST_BUNDLED_DIR={}",
        dir.display()
    );
}
