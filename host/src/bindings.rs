//! Host bindings generated from `wit/`, the one contract every plugin speaks.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
    // Every import may wait (registry, engine, network); logging is cheap
    // but async too, so a new interface needs no entry here.
    imports: { default: async },
    exports: { default: async },
});

pub use self::runner::plugin::types::Error as PluginError;

/// A readable one-line form of a plugin error: `denied: kv: ...`. (The
/// generated `Display` prints the variant's debug form.)
pub fn describe(error: &PluginError) -> String {
    let (kind, message) = match error {
        PluginError::Denied(m) => ("denied", m),
        PluginError::NotFound(m) => ("not found", m),
        PluginError::Conflict(m) => ("conflict", m),
        PluginError::InvalidConfig(m) => ("invalid config", m),
        PluginError::Failed(m) => ("failed", m),
        PluginError::Timeout(m) => ("timeout", m),
        PluginError::Unavailable(m) => ("unavailable", m),
    };
    format!("{kind}: {message}")
}
