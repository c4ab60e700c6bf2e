//! Agent releases: the manifest a plan carries to a node and the exact message the
//! server's Ed25519 release key signs. Shared by the tunnel service (which signs at
//! upload), the policy service (which renders the manifest into an `agent.update`
//! plan) and the agent (which verifies it before it replaces anything).

/// Architectures releases are built for (`uname -m`).
pub const ARCHES: &[&str] = &["x86_64", "aarch64"];

/// Largest release binary accepted.
pub const MAX_RELEASE_BYTES: u64 = 256 * 1024 * 1024;

/// Whether `v` is a release version: `1.4.0` or `1.4.0-rc.1` (semver, no build
/// metadata), at most 64 bytes.
pub fn valid_version(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    v.len() <= 64
        && nums.len() == 3
        && nums
            .iter()
            .all(|n| !n.is_empty() && n.len() <= 9 && n.chars().all(|c| c.is_ascii_digit()))
        && pre.is_none_or(|p| {
            !p.is_empty()
                && p.split('.').all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        })
}

/// The bytes the release key signs.
pub fn signed_message(version: &str, arch: &str, sha256: &str, size: u64) -> String {
    format!("lattice-agent-release/v1\n{version}\n{arch}\n{sha256}\n{size}\n")
}

/// What an `agent.update` plan delivers to a node, and what a node that runs a
/// release reports back as its `agent` artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The release's version.
    pub version: String,
    /// Its architecture.
    pub arch: String,
    /// `sha256:<hex>` of the binary.
    pub sha256: String,
    /// The binary's size.
    pub size: u64,
    /// base64 Ed25519 signature over [`signed_message`].
    pub signature: String,
}

impl Manifest {
    /// The text form (the plan's artifact).
    pub fn render(&self) -> String {
        format!(
            "lattice-agent {}\narch {}\nsha256 {}\nsize {}\nsignature {}\n",
            self.version, self.arch, self.sha256, self.size, self.signature
        )
    }

    /// Parse the text form; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("manifest: expected `{name} ...`, found {line:?}"))
        };
        let version = field("lattice-agent")?;
        let arch = field("arch")?;
        let sha256 = field("sha256")?;
        let size = field("size")?
            .parse()
            .map_err(|_| "manifest: size is not a number".to_owned())?;
        let signature = field("signature")?;
        if !valid_version(&version) {
            return Err(format!("manifest: {version:?} is not a release version"));
        }
        Ok(Self {
            version,
            arch,
            sha256,
            size,
            signature,
        })
    }

    /// The message its signature covers.
    pub fn signed_message(&self) -> String {
        signed_message(&self.version, &self.arch, &self.sha256, self.size)
    }
}

/// What a node running an unreleased build (installed by hand) reports: its version
/// and architecture only.
pub fn running(version: &str, arch: &str) -> String {
    format!("lattice-agent {version}\narch {arch}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_manifests() {
        for ok in ["0.1.0", "1.40.2", "1.4.0-rc.1", "2.0.0-next"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in [
            "",
            "1.4",
            "1.4.0.1",
            "v1.4.0",
            "1.4.0-",
            "1.4.0+build",
            "1..0",
            "1.4.0-a/b",
        ] {
            assert!(!valid_version(bad), "{bad}");
        }
        let m = Manifest {
            version: "1.4.0".into(),
            arch: "x86_64".into(),
            sha256: "sha256:ab".into(),
            size: 12,
            signature: "c2ln".into(),
        };
        assert_eq!(Manifest::parse(&m.render()), Ok(m.clone()));
        let e = Manifest::parse("lattice-agent 1.4.0\narch x86_64\n").unwrap_err();
        assert!(e.contains("sha256"), "{e}");
    }
}
