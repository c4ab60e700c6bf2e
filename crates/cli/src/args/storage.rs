//! Command-line syntax of the storage-hosting commands: buckets, kv, static,
//! bindings and storage-tokens.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

use crate::duration::{clap_duration, parse_duration_s};

/// What a bucket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Surface {
    /// Key-value data.
    Kv,
    /// Static website files.
    Static,
}

impl Surface {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Static => "static",
        }
    }
}

/// What a storage token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    Write,
    /// Everything, including deployments.
    Admin,
}

impl Access {
    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// A positive lifetime (`--ttl`): like `--expires-in`, but 0 is refused.
pub fn clap_ttl(text: &str) -> Result<i64, String> {
    match parse_duration_s(text) {
        Ok(0) => Err("the TTL must be longer than 0 s (leave out --ttl for no expiry)".into()),
        Ok(s) => Ok(s),
        Err(e) => Err(e.to_string()),
    }
}

/// `lattice buckets ...`.
#[derive(Debug, Subcommand)]
pub enum BucketsCommand {
    /// Create a bucket.
    Create {
        /// Bucket name.
        name: String,
        /// What it serves.
        #[arg(long, value_enum)]
        surface: Surface,
        /// A kv bucket of secrets: values sealed at rest, never cached, and every
        /// read an `AccessSecret` policy decision (default deny).
        #[arg(long)]
        secret: bool,
    },
    /// List buckets.
    #[command(visible_alias = "ls")]
    List {
        /// Only buckets of this kind.
        #[arg(long, value_enum)]
        surface: Option<Surface>,
    },
    /// Delete a bucket and everything in it.
    #[command(visible_alias = "rm")]
    Delete {
        /// Bucket name.
        name: String,
    },
}

/// `lattice kv ...`.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (as JSON).
    Get {
        /// Bucket name.
        bucket: String,
        /// Key (may contain '/').
        key: String,
    },
    /// Store a value.
    Put {
        /// Bucket name.
        bucket: String,
        /// Key (may contain '/').
        key: String,
        /// JSON value (or any text with --string); '-' reads it, verbatim, from stdin.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Store VALUE as a JSON string instead of parsing it as JSON.
        #[arg(long)]
        string: bool,
        /// Expire the key after this long: 30d, 12h, 90m, 3600s.
        #[arg(long, value_name = "DURATION", value_parser = clap_ttl)]
        ttl: Option<i64>,
        /// Write only if the key is still at this version.
        #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
        if_match: Option<String>,
        /// Write only if the key does not exist.
        #[arg(long)]
        if_absent: bool,
    },
    /// Delete a key.
    #[command(visible_alias = "rm")]
    Delete {
        /// Bucket name.
        bucket: String,
        /// Key (may contain '/').
        key: String,
    },
    /// List keys.
    #[command(visible_alias = "ls")]
    List {
        /// Bucket name.
        bucket: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Keys per page.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Start at this cursor (from a previous page).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Follow the cursor through every page.
        #[arg(long)]
        all: bool,
        /// Include the values.
        #[arg(long)]
        values: bool,
    },
}

/// `lattice static ...`.
#[derive(Debug, Subcommand)]
pub enum StaticCommand {
    /// Upload a directory as a new deployment (activated unless --no-activate).
    Deploy {
        /// Directory whose contents become the site root.
        dir: PathBuf,
        /// Static bucket.
        #[arg(long)]
        bucket: String,
        /// Upload without switching the site to it.
        #[arg(long)]
        no_activate: bool,
    },
    /// Activate an earlier deployment (default: the one before the active one).
    Rollback {
        /// Static bucket.
        #[arg(long)]
        bucket: String,
        /// Deployment to activate.
        #[arg(long, value_name = "DEPLOYMENT_ID")]
        to: Option<String>,
    },
    /// List deployments, newest first.
    Deployments {
        /// Static bucket.
        #[arg(long)]
        bucket: String,
    },
    /// List the files of the active deployment.
    Ls {
        /// Static bucket.
        #[arg(long)]
        bucket: String,
    },
    /// Upload one file (makes a new, active deployment).
    Put {
        /// Static bucket.
        #[arg(long)]
        bucket: String,
        /// File to upload.
        local_file: PathBuf,
        /// Path on the site, such as assets/app.js.
        remote_path: String,
    },
    /// Remove one file (makes a new, active deployment).
    Rm {
        /// Static bucket.
        #[arg(long)]
        bucket: String,
        /// Path on the site.
        remote_path: String,
    },
}

/// `lattice bindings ...`.
#[derive(Debug, Subcommand)]
pub enum BindingsCommand {
    /// Serve a bucket on a host name.
    Create {
        /// Host name, such as www.example.com.
        host: String,
        /// Bucket to serve.
        #[arg(long)]
        bucket: String,
    },
    /// List bindings.
    #[command(visible_alias = "ls")]
    List,
    /// Remove a binding.
    #[command(visible_alias = "rm")]
    Delete {
        /// Host name.
        host: String,
    },
    /// Start serving a binding again.
    Enable {
        /// Host name.
        host: String,
    },
    /// Stop serving a binding without removing it.
    Disable {
        /// Host name.
        host: String,
    },
}

/// `lattice storage-tokens ...`.
#[derive(Debug, Subcommand)]
pub enum StorageTokensCommand {
    /// Create a token for the storage data APIs; its secret is printed once.
    Create {
        /// API it is for.
        #[arg(long, value_enum)]
        surface: Surface,
        /// What it may do.
        #[arg(long, value_enum)]
        access: Access,
        /// Bucket it may use (repeat for more, or '*' for every bucket).
        #[arg(long = "bucket", required = true)]
        buckets: Vec<String>,
        /// Label.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: 30d, 12h, 90m, 3600s; 0 or absent for no expiry.
        #[arg(long, value_name = "DURATION", value_parser = clap_duration)]
        expires_in: Option<i64>,
    },
    /// List storage tokens.
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a storage token.
    #[command(visible_alias = "rm")]
    Revoke {
        /// Token id (from storage-tokens list).
        id: String,
    },
}
