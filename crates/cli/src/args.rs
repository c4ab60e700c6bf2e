//! Command-line syntax.

mod storage;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::duration::clap_duration;
use crate::output::Format;

pub use storage::{
    BindingsCommand, BucketsCommand, KvCommand, StaticCommand, StorageTokensCommand,
};

/// Lattice operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "lattice",
    version,
    about = "Operate a Lattice control plane",
    after_help = "Environment: LATTICE_TOKEN overrides the stored token; LATTICE_CONFIG \
                  the config file; LATTICE_PASSWORD, LATTICE_TOTP_CODE and \
                  LATTICE_NEW_PASSWORD answer prompts in scripts."
)]
pub struct Cli {
    /// Output format for data on stdout.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Server base URL (overrides the stored one), e.g. https://lattice.example:8443.
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Config file with the stored credentials.
    #[arg(long, global = true, env = "LATTICE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Trust only the CA certificate(s) in this PEM file (e.g. <data-dir>/tls/ca.pem).
    #[arg(long, global = true, value_name = "PEM", conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (test servers only).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with a password (and TOTP code) and store an operator token.
    Login(LoginArgs),
    /// Revoke the stored token and delete the config file.
    Logout,
    /// Show the user and credential the server sees.
    Whoami,
    /// Operator API tokens.
    #[command(subcommand, visible_alias = "tokens")]
    Token(TokenCommand),
    /// Users of your org.
    #[command(subcommand, visible_alias = "user")]
    Users(UsersCommand),
    /// Groups of your org's users.
    #[command(subcommand, visible_alias = "group")]
    Groups(GroupsCommand),
    /// Single sign-on (OpenID Connect) providers of your org.
    #[command(subcommand)]
    Sso(SsoCommand),
    /// Your orgs: list them, switch the stored token to another, join by invitation,
    /// invite a user into yours.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Every org of the platform (scope orgs:admin): create, rename, limit, delete.
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// Cedar policies: who may reach which node, run which task, read which secret.
    #[command(subcommand, visible_alias = "policies")]
    Policy(PolicyCommand),
    /// Reviewed changes: the desired state of nodes (a firewall table).
    #[command(subcommand, visible_alias = "intents")]
    Intent(IntentCommand),
    /// Plans of reviewed changes: render, show the diff, approve the hash, follow.
    #[command(subcommand, visible_alias = "plans")]
    Plan(PlanCommand),
    /// Agent releases for `agent.update` intents: upload (signed by the server), list.
    #[command(subcommand, name = "agent-release", visible_alias = "agent-releases")]
    AgentRelease(AgentReleaseCommand),
    /// Two-factor authentication for your own account.
    #[command(subcommand)]
    Totp(TotpCommand),
    /// Change your own password (logs in with the current one; your other sessions end).
    Password {
        /// Account (default: asked, or LATTICE_USERNAME).
        #[arg(short, long, env = "LATTICE_USERNAME")]
        username: Option<String>,
    },
    /// Storage buckets: key-value stores and static sites.
    #[command(subcommand, visible_alias = "bucket")]
    Buckets(BucketsCommand),
    /// Keys and values in a kv bucket.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Static sites: deploy, roll back, list and change files.
    #[command(subcommand)]
    Static(StaticCommand),
    /// Host names that serve a bucket.
    #[command(subcommand, visible_alias = "binding")]
    Bindings(BindingsCommand),
    /// Tokens for the storage data APIs (separate from operator tokens).
    #[command(subcommand, visible_alias = "storage-token")]
    StorageTokens(StorageTokensCommand),
    /// Show fleet resources (`get nodes`, `get node ID`).
    #[command(subcommand)]
    Get(GetCommand),
    /// Enroll and configure nodes.
    #[command(subcommand, visible_alias = "node")]
    Nodes(NodesCommand),
    /// The task queue.
    #[command(subcommand, visible_alias = "task")]
    Tasks(TasksCommand),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Forward a local port to a TCP port on a node, through its agent's tunnel
    /// (like `kubectl port-forward`: any protocol; the agent must allow the port).
    Proxy {
        /// Node id.
        node: String,
        /// Port on the node (its agent must allow it).
        port: u16,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

/// `lattice login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Login name (asked on a terminal when absent; default admin).
    #[arg(short, long, env = "LATTICE_USERNAME", conflicts_with = "sso")]
    pub username: Option<String>,
    /// Log in through this single sign-on provider in a browser instead (the
    /// authorization code flow with PKCE, back to a listener on 127.0.0.1).
    #[arg(long, value_name = "PROVIDER")]
    pub sso: Option<String>,
    /// With --sso: print the URL instead of opening a browser.
    #[arg(long, requires = "sso")]
    pub no_browser: bool,
    /// The org to act in (one you are a member of; default: your account's own).
    #[arg(long, env = "LATTICE_ORG", conflicts_with = "sso")]
    pub org: Option<String>,
}

/// `lattice org ...`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// The orgs you belong to, with your scopes in each (* marks the current one).
    #[command(visible_alias = "ls")]
    List,
    /// Act in another of your orgs: the stored token is replaced by one for it.
    Use {
        /// Org name.
        name: String,
    },
    /// Accept an invitation (the link or its code).
    Join {
        /// The link, or the code after its '#'.
        link: String,
    },
    /// Invite an existing user into your org; prints the one-time link to hand over.
    Invite {
        /// Their username.
        username: String,
        /// Their scopes here (repeat).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in seconds (default 7 days, at most 30).
        #[arg(long, default_value_t = 0)]
        expires_in_s: i64,
    },
}

/// Limits of an org (0: none).
#[derive(Debug, Args, Default, Clone, Copy)]
pub struct LimitArgs {
    /// Buckets.
    #[arg(long)]
    pub max_buckets: Option<i64>,
    /// Bytes stored in buckets.
    #[arg(long)]
    pub max_stored_bytes: Option<i64>,
    /// Enrolled nodes.
    #[arg(long)]
    pub max_nodes: Option<i64>,
    /// Live operator tokens.
    #[arg(long)]
    pub max_tokens: Option<i64>,
}

/// `lattice orgs ...`.
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Every org.
    #[command(visible_alias = "ls")]
    List,
    /// Create an org.
    Create {
        /// 1 to 63 of a-z, 0-9 and '-'.
        name: String,
        /// Its first administrator (default: you).
        #[arg(long)]
        admin: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// One org and what it holds.
    Show { name: String },
    /// Rename an org.
    Rename { name: String, new_name: String },
    /// Set an org's limits (the ones given; 0 lifts one).
    Limits {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Delete an org; with --force also everything it holds.
    #[command(visible_alias = "rm")]
    Delete {
        name: String,
        /// Remove its buckets, nodes, tasks, policies, tokens and members too.
        #[arg(long)]
        force: bool,
    },
}

/// `lattice token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Label, such as ci-deploy.
        #[arg(long)]
        name: String,
        /// Scope to grant (repeat, or separate with commas); never more than yours.
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime: 30d, 12h, 90m, 3600s, or 0 for no expiry.
        #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = clap_duration)]
        expires_in: i64,
    },
    /// List your tokens (every token of the org with users:admin).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token.
    #[command(visible_alias = "rm")]
    Revoke {
        /// Token id (from token list).
        id: String,
    },
}

/// `lattice users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (password from a prompt, LATTICE_NEW_PASSWORD or a stdin line).
    Create {
        /// Login name.
        username: String,
        /// Scope to grant (repeat, or separate with commas); never more than yours.
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// List users.
    #[command(visible_alias = "ls")]
    List,
    /// Lift a login lockout.
    Unlock {
        /// User id or username.
        user: String,
    },
    /// Disable an account: no login, and none of its sessions or tokens work.
    Disable {
        /// User id or username.
        user: String,
    },
    /// Enable a disabled account again.
    Enable {
        /// User id or username.
        user: String,
    },
    /// Set a member's scopes in your org (replaces them; never more than yours).
    Scopes {
        /// User id or username.
        user: String,
        /// Scope (repeat, or separate with commas).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// End a member's membership in your org (not their account's own org).
    Remove {
        /// User id or username.
        user: String,
    },
}

/// `lattice groups ...`.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List groups, with their member counts.
    #[command(visible_alias = "ls")]
    List,
    /// Show a group and its members.
    Get {
        /// Group name.
        name: String,
    },
    /// Create a group (a name of lowercase letters, digits and '-').
    Create {
        /// Group name.
        name: String,
        /// What the group is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a group (never admins).
    #[command(visible_alias = "rm")]
    Delete {
        /// Group name.
        name: String,
    },
    /// Make a user a member of a group.
    AddMember {
        /// Group name.
        name: String,
        /// Username.
        user: String,
    },
    /// Remove a user from a group.
    RemoveMember {
        /// Group name.
        name: String,
        /// Username.
        user: String,
    },
}

/// `lattice intent ...`.
#[derive(Debug, Subcommand)]
pub enum IntentCommand {
    /// List your org's intents (newest versions).
    #[command(visible_alias = "ls")]
    List,
    /// Show an intent.
    Get {
        /// Intent name.
        name: String,
    },
    /// Create an intent or store a new version of it, from a YAML or JSON file
    /// (`name`, `kind`, `selector`, `spec`); every bad field is named.
    Apply {
        /// The file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Render a plan of the intent and print its diff per node (the plan stays
    /// pending for review: `lattice plan approve`).
    Diff {
        /// Intent name.
        name: String,
    },
    /// Every version of an intent, newest first.
    History {
        /// Intent name.
        name: String,
    },
    /// Delete an intent (its history stays).
    #[command(visible_alias = "rm")]
    Delete {
        /// Intent name.
        name: String,
    },
}

/// `lattice sso ...`.
#[derive(Debug, Subcommand)]
pub enum SsoCommand {
    /// Add a provider; its discovery document is checked first. The client secret
    /// is asked for (or LATTICE_SSO_CLIENT_SECRET), sealed, and never shown again.
    Add {
        /// 1-40 of a-z, 0-9 and '-': in the login URLs.
        name: String,
        /// The issuer URL, exactly as the provider names itself.
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        client_id: String,
        /// What the login button says (default: the name).
        #[arg(long)]
        display_name: Option<String>,
        /// Asked for besides openid (repeat; default: email).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The claim that is the Lattice username.
        #[arg(long, default_value = "email")]
        username_claim: String,
        /// Accept logins whose email the provider does not say is verified.
        #[arg(long)]
        allow_unverified_email: bool,
        /// Create the user on their first login (default: only pre-created users).
        #[arg(long)]
        create_users: bool,
        /// With --create-users: a scope of the users it creates (repeat).
        #[arg(long = "new-user-scope", requires = "create_users")]
        new_user_scopes: Vec<String>,
        /// With --create-users: a group they join (repeat).
        #[arg(long = "new-user-group", requires = "create_users")]
        new_user_groups: Vec<String>,
    },
    /// The providers, with their redirect URLs.
    #[command(visible_alias = "ls")]
    List,
    /// One provider.
    Show { name: String },
    /// Remove a provider (users it bound keep their accounts).
    #[command(visible_alias = "rm")]
    Remove { name: String },
}

/// `lattice agent-release ...`.
#[derive(Debug, Subcommand)]
pub enum AgentReleaseCommand {
    /// Upload a lattice-agent binary; the server signs it with its release key.
    Upload {
        /// The binary.
        file: std::path::PathBuf,
        /// What the binary's `lattice-agent version` prints.
        #[arg(long)]
        version: String,
        /// x86_64 or aarch64.
        #[arg(long, default_value = "x86_64")]
        arch: String,
    },
    /// The releases, newest first, and the key agents pin.
    #[command(visible_alias = "ls")]
    List,
}

/// `lattice plan ...`.
#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Render a plan of an intent for its nodes.
    Create {
        /// Intent name.
        intent: String,
        /// Only this node of the intent's (repeat).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// The newest plans.
    #[command(visible_alias = "ls")]
    List,
    /// A plan with the diff of every node (in colour on a terminal).
    Show {
        /// Plan id.
        id: String,
    },
    /// The rollout of a plan, node by node.
    Status {
        /// Plan id.
        id: String,
    },
    /// Approve the plan whose hash you reviewed; its rollout starts.
    Approve {
        /// Plan id.
        id: String,
        /// The hash shown by `lattice plan show`.
        #[arg(long)]
        hash: String,
        /// Your TOTP code (asked on a terminal, or LATTICE_TOTP_CODE, when the
        /// server needs a fresh one).
        #[arg(long)]
        totp_code: Option<String>,
    },
    /// Reject a pending plan.
    Reject {
        /// Plan id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Cancel a pending plan.
    Cancel {
        /// Plan id.
        id: String,
    },
}

/// `lattice policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// List your org's policies.
    #[command(visible_alias = "ls")]
    List,
    /// Show a policy, its Cedar text included.
    Get {
        /// Policy name.
        name: String,
    },
    /// Create or replace a policy from a file: the seed's `CedarPolicy` YAML
    /// (`metadata.name`, `spec.policies`, `spec.enabled`, `spec.priority`,
    /// `spec.description`, `spec.expires_at`) or plain Cedar (`.cedar`; the name is
    /// `--name` or the file's stem).
    Apply {
        /// The file (`-` for stdin, read as YAML).
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Name of a plain `.cedar` policy (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Store nothing: show which of the newest recorded decisions would flip.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a policy.
    #[command(visible_alias = "rm")]
    Delete {
        /// Policy name.
        name: String,
    },
    /// Check a file (YAML or `.cedar`) against the schema without storing it.
    Validate {
        /// The file.
        file: String,
    },
    /// Explain the decision on a question: allow or deny, and which policies decided.
    Explain {
        /// `user:NAME`, `token:NAME` (a storage token), or a Cedar entity.
        #[arg(long)]
        principal: String,
        /// AccessNode, RunTask, AccessSecret, ApprovePlan or AccessCluster.
        #[arg(long)]
        action: String,
        /// `node:ID`, `secret:BUCKET/KEY`, `plan:ID`, `cluster:NAME`, or a Cedar entity.
        #[arg(long)]
        resource: String,
        /// `KEY=VALUE` (repeat): `port=22`, `protocol=tcp`, `kind=exec`.
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
}

/// `lattice totp ...` (logs in with your password first: API tokens cannot change TOTP).
#[derive(Debug, Subcommand)]
pub enum TotpCommand {
    /// Turn TOTP on: shows the secret, asks for a code, prints recovery codes once.
    Enable {
        /// Account (default: asked, or LATTICE_USERNAME).
        #[arg(short, long, env = "LATTICE_USERNAME")]
        username: Option<String>,
    },
    /// Turn TOTP off (needs a current code or a recovery code; LATTICE_TOTP_DISABLE_CODE in scripts).
    Disable {
        /// Account (default: asked, or LATTICE_USERNAME).
        #[arg(short, long, env = "LATTICE_USERNAME")]
        username: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::storage::{Access, Surface};
    use super::*;

    #[test]
    fn syntax_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn scopes_repeat_or_split_on_commas() {
        let cli = Cli::try_parse_from([
            "lattice",
            "token",
            "create",
            "--name",
            "ci",
            "--scope",
            "kv:read,kv:write",
            "--scope",
            "nodes:read",
            "-o",
            "json",
            "--expires-in",
            "12h",
        ])
        .unwrap();
        assert_eq!(cli.output, Format::Json);
        let Command::Token(TokenCommand::Create {
            scopes, expires_in, ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(scopes, ["kv:read", "kv:write", "nodes:read"]);
        assert_eq!(expires_in, 12 * 3600);
    }

    #[test]
    fn kv_put_flags_parse() {
        let cli = Cli::try_parse_from([
            "lattice",
            "kv",
            "put",
            "b",
            "a/k",
            "-",
            "--string",
            "--ttl",
            "1h",
            "--if-absent",
        ])
        .unwrap();
        let Command::Kv(KvCommand::Put {
            value,
            string,
            ttl,
            if_absent,
            if_match,
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(value, "-");
        assert!(string && if_absent);
        assert_eq!(ttl, Some(3600));
        assert_eq!(if_match, None);
        // A negative JSON number is a value, not a flag.
        assert!(Cli::try_parse_from(["lattice", "kv", "put", "b", "k", "-5"]).is_ok());
    }

    #[test]
    fn kv_put_refuses_bad_ttls_and_both_conditions() {
        for ttl in ["0", "never", "5y", "-1h"] {
            let r = Cli::try_parse_from(["lattice", "kv", "put", "b", "k", "1", "--ttl", ttl]);
            assert_eq!(r.unwrap_err().exit_code(), 2, "{ttl}");
        }
        let r = Cli::try_parse_from([
            "lattice",
            "kv",
            "put",
            "b",
            "k",
            "1",
            "--if-match",
            "3",
            "--if-absent",
        ]);
        assert_eq!(r.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn storage_tokens_take_several_buckets() {
        let cli = Cli::try_parse_from([
            "lattice",
            "storage-tokens",
            "create",
            "--surface",
            "static",
            "--access",
            "write",
            "--bucket",
            "a",
            "--bucket",
            "b",
            "--expires-in",
            "30d",
        ])
        .unwrap();
        let Command::StorageTokens(StorageTokensCommand::Create {
            surface,
            access,
            buckets,
            expires_in,
            name,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!((surface, access), (Surface::Static, Access::Write));
        assert_eq!(buckets, ["a", "b"]);
        assert_eq!(expires_in, Some(30 * 86_400));
        assert_eq!(name, None);
        let missing = Cli::try_parse_from([
            "lattice",
            "storage-tokens",
            "create",
            "--surface",
            "kv",
            "--access",
            "read",
        ]);
        assert_eq!(missing.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_durations_are_usage_errors() {
        let err = Cli::try_parse_from([
            "lattice",
            "token",
            "create",
            "--name",
            "x",
            "--scope",
            "*",
            "--expires-in",
            "5y",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

/// `lattice get ...`.
#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Every node of your org.
    Nodes,
    /// One node, with its facts.
    Node {
        /// Node id.
        id: String,
    },
}

/// `lattice nodes ...`.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// Create a single-use join token and print the install command.
    JoinToken {
        /// Labels for the node (`key=value`, repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        expires_in_s: i64,
    },
    /// Enable a privileged capability on the server side (the agent must consent too).
    Enable {
        /// Node id.
        id: String,
        /// Capability (`exec`).
        capability: String,
    },
    /// Disable a capability on the server side.
    Disable {
        /// Node id.
        id: String,
        /// Capability.
        capability: String,
    },
    /// Forget a node and revoke its credential.
    Delete {
        /// Node id.
        id: String,
    },
    /// Ask a connected node's agent to reconnect, to another server URL with `--url`
    /// (it keeps the URL once that server welcomes it).
    Reconnect {
        /// Node id.
        id: String,
        /// Server URL to move to (`https://host[:port]`); default: the same server.
        #[arg(long, default_value = "")]
        url: String,
        /// Why (shown in the agent's log and the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `lattice tasks ...`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Enqueue a task.
    Create {
        /// Node id.
        node: String,
        /// `facts.refresh` or `exec`.
        kind: String,
        /// JSON payload (exec: `{"argv":["uptime"]}`).
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Enqueueing the same key again returns the first task.
        #[arg(long, default_value = "")]
        idempotency_key: String,
    },
    /// List tasks, newest first.
    List {
        /// Only this node's.
        #[arg(long, default_value = "")]
        node: String,
        /// Only this state.
        #[arg(long, default_value = "")]
        state: String,
    },
    /// One task with its result.
    Get {
        /// Task id.
        id: String,
    },
    /// Cancel a queued or running task.
    Cancel {
        /// Task id.
        id: String,
    },
}

/// `lattice audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print entries in order (and keep printing new ones with --follow).
    Tail {
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Keep polling for new entries.
        #[arg(short, long)]
        follow: bool,
    },
    /// Walk the chain; exits 1 and names the first broken entry if it does not hold.
    Verify,
    /// One plan's whole story: its creation, approval (and refusals), the apply
    /// tasks on each node, and how the rollout ended.
    Plan {
        /// Plan id.
        id: String,
    },
}
