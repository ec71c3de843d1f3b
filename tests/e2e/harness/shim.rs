//! The fault-injection shim (`tests/shim/faults.c`), built once per test
//! process with the machine's C compiler and preloaded into a proxy (see
//! [`ProxyBuilder::faults`]): a slow or failing disk under the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::ProxyBuilder;

/// The built shim's path.
pub fn shim() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim/faults.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}.so", std::process::id()));
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("cc (a C compiler) builds the fault shim");
        assert!(
            built.status.success(),
            "cc could not build {}: {}",
            src.display(),
            String::from_utf8_lossy(&built.stderr)
        );
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
