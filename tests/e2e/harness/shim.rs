//! The fault-injection shim (`tests/shim/faults.c`), built once per test
//! process with the machine's C compiler and preloaded into a proxy with
//! [`ProxyBuilder::faults`]: a slow or failing disk under the real binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::ProxyBuilder;

/// The built shim's path.
pub fn shim() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/shim/faults.c");
        // Kept for the test process's life: proxies preload it until they exit.
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let out = dir.join("libfaults.so");
        let st = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run cc to build the fault shim");
        assert!(st.success(), "cc could not build {}", src.display());
        out
    })
}

impl ProxyBuilder {
    /// Preloads the fault shim with `vars` (`PG_FAULT_*`) set.
    pub fn faults(self, vars: &[(&str, &str)]) -> Self {
        let mut b = self.env("LD_PRELOAD", shim().to_str().expect("a UTF-8 temp path"));
        for (k, v) in vars {
            b = b.env(k, v);
        }
        b
    }
}
