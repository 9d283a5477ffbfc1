//! The bundled demo sandbox, compiled into the binary so `sandgate serve`
//! works with no files at all. The same files live at the repository root
//! (`sandgate.yaml`, `contracts/`), where `sandgate check --config .` checks them.

use crate::config::Source;

/// The id of the demo tenant `sandgate serve` creates for the demo.
pub const TENANT: &str = "sbx_demo";

/// The demo's files.
pub const FILES: &[(&str, &str)] = &[
    ("sandgate.yaml", include_str!("../sandgate.yaml")),
    (
        "contracts/payments.yaml",
        include_str!("../contracts/payments.yaml"),
    ),
    (
        "fixtures/payments/scenarios.yaml",
        include_str!("../fixtures/payments/scenarios.yaml"),
    ),
];

/// The demo as a configuration source.
pub fn source() -> Source {
    Source::Embedded(FILES)
}
