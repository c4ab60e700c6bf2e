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

/// What each service holds of an org, and dropping it when the org is deleted.
pub mod orgs {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.orgs.v1");
    }
}

/// Storage hosting: KV buckets, static sites, host bindings, storage tokens.
pub mod storage {
    /// Shared-cache key of a KV entry as served through a host binding (the storage
    /// service deletes it on every write; gateways read it).
    pub fn kv_cache_key(bucket_id: &str, key: &str) -> String {
        format!("kv:{bucket_id}:{key}")
    }

    /// Shared-cache key of a host's binding resolution (the storage service deletes
    /// it when the binding changes; gateways read it).
    pub fn host_cache_key(host: &str) -> String {
        format!("host:{host}")
    }

    /// Most files in one static-site deployment: the storage service refuses more,
    /// and the gateway stops unpacking an archive past it.
    pub const MAX_DEPLOYMENT_FILES: usize = 20_000;

    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.storage.v1");
    }
}

pub mod join_token;
pub mod release;
mod storage_grant;
pub mod task_kinds;
pub use storage_grant::GrantRefusal;

/// Task queue and the hash-chained audit log.
pub mod tasks {
    impl v1::TaskState {
        /// Every state a task can be in, in its life's order.
        pub const ALL: [Self; 6] = [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::Dead,
        ];

        /// The name used in the REST API and the database (`queued`, ...).
        pub fn name(self) -> &'static str {
            match self {
                Self::Unspecified => "unspecified",
                Self::Queued => "queued",
                Self::Running => "running",
                Self::Succeeded => "succeeded",
                Self::Failed => "failed",
                Self::Cancelled => "cancelled",
                Self::Dead => "dead",
            }
        }

        /// Parse a state's name.
        pub fn from_name(name: &str) -> Option<Self> {
            Self::ALL.into_iter().find(|s| s.name() == name)
        }
    }

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

/// Policy: Cedar policies and decisions over them.
pub mod policy {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.policy.v1");
    }
}

/// The event bus's messages, each with its channel.
pub mod events {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::pedantic)]
        tonic::include_proto!("lattice.events.v1");
    }

    /// A message type that travels on the bus, on one channel.
    pub trait Event: prost::Message + Default + 'static {
        /// The channel's name (a Redis channel `lattice:bus:<name>` when shared).
        const CHANNEL: &'static str;
    }

    impl Event for v1::HostChanged {
        const CHANNEL: &'static str = "storage.hosts";
    }
    impl Event for v1::StorageTokenRevoked {
        const CHANNEL: &'static str = "storage.tokens";
    }
    impl Event for v1::CredentialRevoked {
        const CHANNEL: &'static str = "identity.revoked";
    }
    impl Event for v1::GroupsChanged {
        const CHANNEL: &'static str = "identity.groups";
    }
    impl Event for v1::TasksRunnable {
        const CHANNEL: &'static str = "tasks.runnable";
    }
    impl Event for v1::NodeChanged {
        const CHANNEL: &'static str = "nodes.changed";
    }
    impl Event for v1::NodeReconnect {
        const CHANNEL: &'static str = "nodes.reconnect";
    }
    impl Event for v1::PoliciesChanged {
        const CHANNEL: &'static str = "policy.changed";
    }
}

/// Encoded `FileDescriptorSet` of every Lattice proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lattice_descriptor");

/// The protobuf codec every generated client and server uses: tonic's prost codec
/// with a 1 KiB starting buffer instead of 8 KiB. A long-lived stream (each agent's
/// stream, each proxied request) keeps its encode and decode buffers for its whole
/// life, so with thousands of agents connected the default cost ~16 KiB each; the
/// buffers still grow to fit larger messages.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Starting size of a stream's encode and decode buffers.
    const BUFFER: usize = 1024;
    /// Encoded bytes a streaming response gathers before it yields (tonic's default).
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// Prost messages with small starting buffers.
    #[derive(Debug)]
    pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for LeanCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for LeanCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }
    }
}
