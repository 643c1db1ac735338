//! A component exporting `cdp:connector/export-destination@0.4.0`, a contract version this host
//! does not know. Only the version matters, so the interface here is a stub.

wit_bindgen::generate!({
    inline: "
        package cdp:connector@0.4.0;
        interface export-destination {
            describe: func() -> string;
        }
        world connector {
            export export-destination;
        }
    ",
    world: "connector",
});

struct Future;

impl exports::cdp::connector::export_destination::Guest for Future {
    fn describe() -> String {
        "a connector from the future".into()
    }
}

export!(Future);
