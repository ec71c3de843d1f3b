//! `[tracing]`: OpenTelemetry span export over OTLP/HTTP (see
//! [`crate::telemetry`]). Off unless `otlp_endpoint` is set; every key is
//! restart-only (the exporter is built at start).

use super::check::Check;
use super::schema;

/// `[tracing]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingSettings {
    /// The OTLP/HTTP traces URL (`http://host:port/v1/traces`; a URL with no
    /// path gets `/v1/traces`). `None`: tracing is off.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded (a client's sampled flag decides for
    /// its own trace only from `[server] trusted_proxies`).
    pub sampling_ratio: SamplingRatio,
    /// `service.name` on every span.
    pub service_name: String,
}

impl Default for TracingSettings {
    /// Tracing off, with the schema's defaults.
    fn default() -> Self {
        let d = |key| schema::default_str(key).unwrap_or_default();
        TracingSettings {
            otlp_endpoint: None,
            sampling_ratio: SamplingRatio(d("tracing.sampling_ratio").parse().unwrap_or(1.0)),
            service_name: d("tracing.service_name").to_string(),
        }
    }
}

/// A ratio in 0.0..=1.0 (checked, so never NaN: equality is total).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SamplingRatio(pub f64);

impl Eq for SamplingRatio {}

pub(super) fn compile(c: &mut Check) -> TracingSettings {
    let d = c.doc();
    let otlp_endpoint = d.str("tracing.otlp_endpoint").and_then(|e| endpoint(c, e));
    let mut t = TracingSettings::default();
    match d.float("tracing.sampling_ratio") {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            c.problem("tracing.sampling_ratio", "must be a number from 0.0 to 1.0")
        }
        Some(r) => t.sampling_ratio = SamplingRatio(r),
        None => {}
    }
    let name = c.read("tracing.service_name", |s| {
        if s.is_empty() || s.len() > 255 || s.bytes().any(|b| b.is_ascii_control()) {
            return Err("must be 1 to 255 characters with no control characters");
        }
        Ok(s.to_string())
    });
    TracingSettings {
        otlp_endpoint,
        service_name: name.unwrap_or_default(),
        ..t
    }
}

/// An `http://` URL with a host and no credentials (no user info, no query,
/// no fragment); no path or `/` becomes `/v1/traces`.
fn endpoint(c: &mut Check, value: &str) -> Option<String> {
    const KEY: &str = "tracing.otlp_endpoint";
    let Ok(uri) = value.parse::<http::Uri>() else {
        c.problem(
            KEY,
            "is not a URL (the value is not repeated here); write e.g. \"http://127.0.0.1:4318/v1/traces\"",
        );
        return None;
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            c.problem(
                KEY,
                "https is not supported: the exporter speaks plain HTTP to a local collector or sidecar",
            );
            return None;
        }
        _ => {
            c.problem(KEY, "must be an http:// URL");
            return None;
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        c.problem(KEY, "must name a host");
        return None;
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        c.problem(
            KEY,
            "must not carry user info (credentials do not belong in the URL; the value is not repeated here)",
        );
        return None;
    }
    if uri.query().is_some() || value.contains('#') {
        c.problem(
            KEY,
            "must not carry a query or a fragment (an api_key there would be printed and logged; the value is not repeated here)",
        );
        return None;
    }
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    Some(if path.is_empty() || path == "/" {
        format!("http://{}/v1/traces", uri.authority()?.as_str())
    } else {
        format!("http://{}{}", uri.authority()?.as_str(), path)
    })
}

#[cfg(test)]
mod tests {
    use super::super::from_str;
    use super::super::tests::{MINIMAL, env, keys};
    use super::*;

    fn with(tracing: &str) -> String {
        format!("[tracing]\n{tracing}\n{MINIMAL}")
    }

    #[test]
    fn off_by_default() {
        let c = from_str(MINIMAL, &env()).unwrap();
        assert_eq!(c.process.tracing, TracingSettings::default());
        assert_eq!(c.process.tracing.otlp_endpoint, None);
        assert_eq!(c.process.tracing.sampling_ratio, SamplingRatio(1.0));
        assert_eq!(c.process.tracing.service_name, "persona-guard");
    }

    #[test]
    fn settings_are_parsed() {
        let c = from_str(
            &with("otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\nsampling_ratio = 0.25\nservice_name = \"guard-eu\""),
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.process.tracing.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(c.process.tracing.sampling_ratio, SamplingRatio(0.25));
        assert_eq!(c.process.tracing.service_name, "guard-eu");
        // An integer ratio is a number too.
        let c = from_str(&with("sampling_ratio = 0"), &env()).unwrap();
        assert_eq!(c.process.tracing.sampling_ratio, SamplingRatio(0.0));
    }

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        for e in ["http://collector:4318", "http://collector:4318/"] {
            let c = from_str(&with(&format!("otlp_endpoint = \"{e}\"")), &env()).unwrap();
            assert_eq!(
                c.process.tracing.otlp_endpoint.as_deref(),
                Some("http://collector:4318/v1/traces"),
                "{e}"
            );
        }
    }

    #[test]
    fn problems_are_reported_under_their_keys_without_the_value() {
        for bad in [
            "not a url",
            "https://collector:4318",
            "ftp://collector",
            "http://user:LEAKCANARY@collector:4318",
            "http://LEAKCANARY@collector:4318/v1/traces",
            "http://collector:4318/v1/traces?api_key=LEAKCANARY",
            "http://collector:4318/v1/traces?",
            "http://collector:4318/?LEAKCANARY",
            "http://collector:4318/v1/traces#LEAKCANARY",
            "/v1/traces",
        ] {
            let p = from_str(&with(&format!("otlp_endpoint = \"{bad}\"")), &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["tracing.otlp_endpoint"], "{bad}");
            assert!(!format!("{p:?}").contains("LEAKCANARY"), "{p:?}");
        }
        for bad in ["1.5", "-0.1", "nan"] {
            let p = from_str(&with(&format!("sampling_ratio = {bad}")), &env()).unwrap_err();
            assert_eq!(keys(&p), vec!["tracing.sampling_ratio"], "{bad}");
        }
        let p = from_str(&with("sampling_ratio = \"half\""), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["tracing.sampling_ratio"]);
        let p = from_str(&with("service_name = \"\""), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["tracing.service_name"]);
        let p = from_str(&with("exporter = \"grpc\""), &env()).unwrap_err();
        assert_eq!(keys(&p), vec!["tracing"]);
        assert!(p[0].message.contains("otlp_endpoint"), "{p:?}");
    }
}
