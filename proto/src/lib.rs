//! Lattice's gRPC contracts, generated from `proto/lattice/**/*.proto`.
//!
//! Services meet only through these types (and `lattice-core` plumbing).

/// Identity: orgs, users, sessions, TOTP, operator tokens.
pub mod identity {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.identity.v1");
    }
}

/// Storage hosting: KV buckets, static sites, host bindings, storage tokens.
pub mod storage {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.storage.v1");
    }
}

/// Task queue and the hash-chained audit log.
pub mod tasks {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.tasks.v1");
    }
}

/// The node agent's protocol (enrollment and the agent stream).
pub mod agent {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.agent.v1");
    }
}

/// Nodes and the proxy tunnel.
pub mod tunnel {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.tunnel.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Lattice proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lattice_descriptor");
