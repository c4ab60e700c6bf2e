CREATE TABLE agent_releases (
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    signature TEXT NOT NULL,
    uploaded_at_ms BIGINT NOT NULL,
    uploaded_by TEXT NOT NULL,
    PRIMARY KEY (version, arch)
);
CREATE TABLE agent_release_chunks (
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (version, arch, seq)
);
CREATE TABLE agent_release_keys (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    private_sealed BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
