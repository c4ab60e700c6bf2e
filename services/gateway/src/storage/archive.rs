//! Unpacking an uploaded site (tar, gzip'd tar or zip) into files, with limits: only
//! regular files, paths that stay inside the site, a cap on file count and on the
//! total of *decompressed* bytes (so a zip or gzip bomb stops early).

use std::io::{Cursor, Read};

use bytes::Bytes;

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Path inside the site, '/'-separated, no leading `./` or `/`.
    pub path: String,
    /// Contents.
    pub data: Bytes,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    /// Not a tar, gzip or zip, or corrupt.
    #[error("archive: {0}")]
    Malformed(String),
    /// An entry that is not a regular file or directory, or a path that escapes.
    #[error("archive entry {0:?}: {1}")]
    BadEntry(String, &'static str),
    /// Over a limit.
    #[error("archive: {0}")]
    TooLarge(String),
}

/// Marks the error a [`Capped`] reader returns, so it maps to `TooLarge`.
const CAP_MESSAGE: &str = "unpacked archive stream is larger than the limit";

/// A reader that fails once more than `left` bytes were read: bounds everything the
/// tar reader pulls through it (file bodies, skipped entries, long names, PAX headers).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other(CAP_MESSAGE));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

fn tar_error(e: &std::io::Error) -> ArchiveError {
    if e.to_string().contains(CAP_MESSAGE) {
        ArchiveError::TooLarge(CAP_MESSAGE.into())
    } else {
        ArchiveError::Malformed(e.to_string())
    }
}

/// What kind of archive the bytes are (from the magic number, not the client's word).
fn kind(data: &[u8]) -> &'static str {
    if data.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        "zip"
    } else {
        "tar"
    }
}

fn clean_path(raw: &str) -> Result<Option<String>, ArchiveError> {
    let p = raw.trim_start_matches("./").trim_start_matches('/');
    if p.is_empty() || p.ends_with('/') {
        return Ok(None);
    }
    if p.contains('\\') || p.split('/').any(|s| s == ".." || s == "." || s.is_empty()) {
        return Err(ArchiveError::BadEntry(
            raw.to_owned(),
            "path leaves the site or has empty segments",
        ));
    }
    Ok(Some(p.to_owned()))
}

struct Budget {
    max_files: usize,
    max_bytes: u64,
    files: usize,
    bytes: u64,
}

impl Budget {
    fn read_entry(&mut self, name: &str, reader: impl Read) -> Result<Bytes, ArchiveError> {
        self.files += 1;
        if self.files > self.max_files {
            return Err(ArchiveError::TooLarge(format!(
                "more than {} files",
                self.max_files
            )));
        }
        let left = self.max_bytes.saturating_sub(self.bytes);
        let mut buf = Vec::new();
        reader
            .take(left + 1)
            .read_to_end(&mut buf)
            .map_err(|e| match tar_error(&e) {
                ArchiveError::Malformed(m) => ArchiveError::Malformed(format!("{name}: {m}")),
                other => other,
            })?;
        self.bytes += buf.len() as u64;
        if self.bytes > self.max_bytes {
            return Err(ArchiveError::TooLarge(format!(
                "more than {} bytes once unpacked",
                self.max_bytes
            )));
        }
        Ok(Bytes::from(buf))
    }
}

/// Unpack `data` (tar, tar.gz or zip). Directories are skipped; anything else that is
/// not a regular file is refused.
pub fn unpack(
    data: &[u8],
    max_files: usize,
    max_bytes: u64,
) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let mut budget = Budget {
        max_files,
        max_bytes,
        files: 0,
        bytes: 0,
    };
    // The tar stream may hold headers and padding besides file bodies (up to 1.5 KiB a
    // file), and nothing else.
    let stream_cap = max_bytes + (max_files as u64) * 1536 + 1024 * 1024;
    match kind(data) {
        "zip" => unpack_zip(data, &mut budget),
        "gzip" => unpack_tar(
            Capped {
                inner: flate2::read::GzDecoder::new(data),
                left: stream_cap,
            },
            &mut budget,
        ),
        _ => unpack_tar(data, &mut budget),
    }
}

fn unpack_tar(reader: impl Read, budget: &mut Budget) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    let entries = archive.entries().map_err(|e| tar_error(&e))?;
    for entry in entries {
        let entry = entry.map_err(|e| tar_error(&e))?;
        let raw = entry
            .path()
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?
            .to_str()
            .ok_or_else(|| ArchiveError::Malformed("an entry name is not UTF-8".into()))?
            .to_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        if !kind.is_file() {
            return Err(ArchiveError::BadEntry(
                raw,
                "is not a regular file (links and devices are refused)",
            ));
        }
        let Some(path) = clean_path(&raw)? else {
            continue;
        };
        let data = budget.read_entry(&raw, entry)?;
        out.push(ArchiveFile { path, data });
    }
    if out.is_empty() && budget.files == 0 {
        return Err(ArchiveError::Malformed(
            "no files (is this a tar, tar.gz or zip archive?)".into(),
        ));
    }
    Ok(out)
}

fn unpack_zip(data: &[u8], budget: &mut Budget) -> Result<Vec<ArchiveFile>, ArchiveError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(data))
        .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let file = archive
            .by_index(i)
            .map_err(|e| ArchiveError::Malformed(e.to_string()))?;
        let raw = file
            .name()
            .map(std::borrow::Cow::into_owned)
            .map_err(|e| ArchiveError::Malformed(format!("entry {i}: {e}")))?;
        if file.is_dir() {
            continue;
        }
        if file.is_symlink() {
            return Err(ArchiveError::BadEntry(raw, "is a symlink"));
        }
        if file.enclosed_name().is_none() {
            return Err(ArchiveError::BadEntry(raw, "path leaves the site"));
        }
        let Some(path) = clean_path(&raw)? else {
            continue;
        };
        let data = budget.read_entry(&raw, file)?;
        out.push(ArchiveFile { path, data });
    }
    if out.is_empty() {
        return Err(ArchiveError::Malformed(
            "no files in the zip archive".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tar_gzip_and_zip_unpack_the_same() {
        let files: &[(&str, &[u8])] = &[("index.html", b"<h1>hi</h1>"), ("./css/a.css", b"body{}")];
        let tar = tar_of(files);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut zw = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in files {
            zw.start_file(
                name.trim_start_matches("./"),
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            zw.write_all(data).unwrap();
        }
        let zip = zw.finish().unwrap().into_inner();
        for archive in [tar, gz, zip] {
            let out = unpack(&archive, 10, 1 << 20).unwrap();
            let paths: Vec<&str> = out.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(paths, vec!["index.html", "css/a.css"]);
            assert_eq!(&out[1].data[..], b"body{}");
        }
    }

    #[test]
    fn escapes_links_and_bombs_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_link_name("/etc/passwd").unwrap();
        h.set_cksum();
        b.append_data(&mut h, "evil", &[][..]).unwrap();
        let link = b.into_inner().unwrap();
        assert!(matches!(
            unpack(&link, 10, 1 << 20),
            Err(ArchiveError::BadEntry(..))
        ));

        // A ".." path written raw into the header (the builder refuses to).
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(
            unpack(&raw, 10, 1 << 20),
            Err(ArchiveError::BadEntry(..))
        ));

        let zeros = vec![0u8; 4 << 20];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar_of(&[("big.bin", &zeros)])).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            unpack(&bomb, 10, 1 << 20),
            Err(ArchiveError::TooLarge(_))
        ));
        assert!(matches!(
            unpack(&tar_of(&[("a", b"1"), ("b", b"2")]), 1, 1 << 20),
            Err(ArchiveError::TooLarge(_))
        ));
        assert!(unpack(b"not an archive at all", 10, 1 << 20).is_err());
    }
}
