//! Packing a directory for `lattice static deploy`: a gzip'd tar built in memory,
//! and the Content-Type of a file from its extension.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

/// A packed directory.
#[derive(Debug)]
pub struct Archive {
    /// The `.tar.gz` bytes.
    pub gz: Vec<u8>,
    /// Regular files packed.
    pub files: usize,
    /// Their total size before compression.
    pub bytes: u64,
}

/// The regular files under `dir`, as (`/`-separated path relative to `dir`, path on
/// disk), sorted. Symlinks and special files are skipped with a warning through
/// `warn`; a name that is not valid UTF-8 is an error.
pub fn list_files(
    dir: &Path,
    warn: &mut dyn FnMut(String),
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    walk(dir, "", &mut out, warn)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
    warn: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read directory {}", dir.display()))?;
        entries.push(entry);
    }
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            bail!(
                "{} is not a valid UTF-8 name; rename it (or move it out of the directory)",
                path.display()
            );
        };
        let rel = format!("{prefix}{name}");
        let kind = entry
            .file_type()
            .with_context(|| format!("cannot read {}", path.display()))?;
        if kind.is_symlink() {
            warn(format!("skipping symlink {rel}"));
        } else if kind.is_dir() {
            walk(&path, &format!("{rel}/"), out, warn)?;
        } else if kind.is_file() {
            out.push((rel, path));
        } else {
            warn(format!("skipping {rel}: not a regular file"));
        }
    }
    Ok(())
}

/// Pack every regular file under `dir` into a gzip'd tar (mode 0644, mtime 0, so the
/// same tree always packs the same way).
pub fn build_archive(dir: &Path, warn: &mut dyn FnMut(String)) -> anyhow::Result<Archive> {
    let files = list_files(dir, warn)?;
    if files.is_empty() {
        bail!("{} has no files to deploy", dir.display());
    }
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut bytes = 0u64;
    for (rel, path) in &files {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
        bytes = bytes.saturating_add(size);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder
            .append_data(&mut header, rel, data.as_slice())
            .with_context(|| format!("cannot pack {rel}"))?;
    }
    let gz = builder
        .into_inner()
        .and_then(GzEncoder::finish)
        .context("cannot finish the archive")?;
    Ok(Archive {
        gz,
        files: files.len(),
        bytes,
    })
}

/// The Content-Type to send for a file, from its extension.
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "rss" => "application/rss+xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn unpack(gz: &[u8]) -> Vec<(String, Vec<u8>, u32)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            let mode = entry.header().mode().unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, data, mode));
        }
        out
    }

    #[test]
    fn directories_pack_with_relative_slash_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("assets/img")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("assets/app.js"), "console.log(1)").unwrap();
        let binary: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        std::fs::write(root.join("assets/img/logo.png"), &binary).unwrap();
        let long = format!("{}/{}.txt", "d".repeat(80), "n".repeat(80));
        std::fs::create_dir_all(root.join("d".repeat(80))).unwrap();
        std::fs::write(root.join(&long), "long").unwrap();

        let mut warnings = Vec::new();
        let archive = build_archive(root, &mut |w| warnings.push(w)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(archive.files, 4);
        assert_eq!(archive.bytes, 11 + 14 + 70_000 + 4);

        let files = unpack(&archive.gz);
        let paths: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "assets/app.js",
                "assets/img/logo.png",
                long.as_str(),
                "index.html"
            ]
        );
        assert_eq!(files[0].1, b"console.log(1)");
        assert_eq!(files[1].1, binary);
        assert_eq!(files[3].1, b"<h1>hi</h1>");
        assert!(files.iter().all(|f| f.2 == 0o644));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(outside.path().join("secret"), "no").unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linkdir")).unwrap();

        let mut warnings = Vec::new();
        let archive = build_archive(root, &mut |w| warnings.push(w)).unwrap();
        let files = unpack(&archive.gz);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "a.txt");
        assert_eq!(
            warnings,
            ["skipping symlink link.txt", "skipping symlink linkdir"]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn non_utf8_names_are_refused() {
        use std::os::unix::ffi::OsStrExt as _;

        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
        std::fs::write(dir.path().join(name), "x").unwrap();
        let err = build_archive(dir.path(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn empty_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(build_archive(dir.path(), &mut |_| {}).is_err());
        assert!(build_archive(&dir.path().join("missing"), &mut |_| {}).is_err());
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b/APP.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("img/logo.svg"), "image/svg+xml");
        assert_eq!(content_type("a.tar.gz"), "application/gzip");
        assert_eq!(content_type(".htaccess"), "application/octet-stream");
        assert_eq!(content_type("dir.d/README"), "application/octet-stream");
        assert_eq!(content_type("x.unknown"), "application/octet-stream");
    }
}
