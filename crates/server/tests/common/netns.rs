//! A network namespace for tests that run the real `nft` (never on the host's own
//! tables).

use std::process::{Child, Command, Stdio};

/// A network namespace of its own, held open by a sleeping process (killed on drop).
pub struct Netns {
    holder: Child,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl Netns {
    /// A new namespace, or None where `unshare -rn` cannot run (CI requires it).
    pub fn new() -> Option<Self> {
        let works = Command::new("unshare")
            .args(["-rn", "nft", "list", "ruleset"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            works || std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but `unshare -rn nft` does not run (scripts/test.sh installs nftables)"
        );
        if !works {
            return None;
        }
        let holder = Command::new("unshare")
            .args(["-rn", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // The namespace exists once unshare has exec'd sleep.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Self { holder })
    }

    /// The argv prefix that runs nft inside the namespace.
    pub fn nft(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.holder.id().to_string(),
            "-U",
            "-n",
            "--preserve-credentials",
            "nft",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Run nft in the namespace: its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let prefix = self.nft();
        let out = Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
