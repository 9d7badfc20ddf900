//! What every CloudWatch EMF document login-etl writes shares: the
//! default namespace and service, and the level a document must carry to
//! pass Lambda's log filter. The function's documents are ingest's
//! ([`crate::ingest::metrics`]), maintenance's the table's.

/// Default `POWERTOOLS_METRICS_NAMESPACE`.
pub const DEFAULT_NAMESPACE: &str = "LoginEtl";
/// Default `POWERTOOLS_SERVICE_NAME`.
pub const DEFAULT_SERVICE: &str = "login-etl";

/// The level an EMF document must carry to pass Lambda's log-level filter
/// set to `filter` (`AWS_LAMBDA_LOG_LEVEL`, or `RUST_LOG`-style directives):
/// INFO, or the filter's default level when that is higher.
pub fn emf_level(filter: Option<&str>) -> &'static str {
    let default = filter
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .rfind(|part| !part.contains('='))
        .unwrap_or("");
    match default.to_ascii_uppercase().as_str() {
        "WARN" | "WARNING" => "WARN",
        "ERROR" => "ERROR",
        "FATAL" => "FATAL",
        "OFF" => "FATAL",
        _ => "INFO",
    }
}
