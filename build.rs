//! Embeds the git commit into the module so `SYNC.STATUS` can show it
//! (`MODULE LIST` only shows an integer version).
//!
//! The script asks cargo to rerun it only when the commit can have changed, and
//! names only files that exist: a `rerun-if-changed` path that does not exist
//! makes cargo treat the package as stale on every build. In a `git worktree`
//! `.git` is a file, not a directory, so `.git/HEAD` never exists there; the
//! paths are asked from git instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git <args>` and returns its trimmed output, or `None` if git is
/// missing, fails, or prints nothing.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Tells cargo to rerun this script when `path` changes, if it exists.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    let sha = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BISYNC_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=build.rs");
    // HEAD lives in the (per-worktree) git dir; branch refs and packed-refs in the common dir.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch(&PathBuf::from(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(branch));
        }
        watch(&common.join("packed-refs"));
    }
}
