//! Decisions: one org's enabled policies, indexed by the entities their scopes name,
//! so that a request evaluates only the statements that can apply to it.
//!
//! Cedar's own `Authorizer` evaluates every statement in the set. Here each statement
//! is filed under its scope: the principal it names (`==`, `in`, `is ... in`), its
//! principal type (`is`), or "any principal"; the same for actions and resources. A
//! request gathers the candidates of whichever dimension has fewest, keeps those whose
//! other two scopes match, and asks Cedar about each survivor alone. Cedar's answer
//! is the same as over the whole set (a statement whose scope does not match is never
//! satisfied), which `tests::indexed_and_unindexed_agree` checks on random requests.
//! Before Cedar is asked, a survivor's [guards](crate::guard) (`context.port == 22`,
//! `resource.getTag("env") == "prod"`, ...) are checked against the request: a
//! statement whose guard fails cannot be satisfied and is not evaluated.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr as _;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, RestrictedExpression,
};

use crate::guard::{Fact, Facts, Guard, Seen, guards_of};
use crate::model::{PolicyDoc, doc_of};

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A person, or an operator token acting for one.
    User {
        /// Username.
        name: String,
        /// Org id.
        org: String,
        /// Group names.
        groups: Vec<String>,
    },
    /// A storage token (`token:<name>`) or a node (`node:<id>`) reading secrets.
    Service {
        /// `storage_token` or `node`.
        kind: String,
        /// The token's name or the node's id.
        name: String,
        /// Org id.
        org: String,
    },
}

/// Whether a port is reached by the HTTP proxy or a TCP port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `/api/v1/nodes/{id}/proxy/{port}/...`
    Http,
    /// A port forward.
    Tcp,
}

impl Protocol {
    /// As Cedar sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

/// What is asked, with its context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reach `port` of a node.
    AccessNode {
        /// The port.
        port: u16,
        /// How.
        protocol: Protocol,
    },
    /// Queue a task of `kind` on a node.
    RunTask {
        /// Task kind.
        kind: String,
    },
    /// Read a secret value.
    AccessSecret,
    /// Approve a plan.
    ApprovePlan,
    /// Reach a cluster.
    AccessCluster,
}

impl Action {
    /// Whether the action applies to `resource` (the schema's `appliesTo`).
    pub fn applies_to(&self, resource: &Resource) -> bool {
        matches!(
            (self, resource),
            (
                Self::AccessNode { .. } | Self::RunTask { .. },
                Resource::Node { .. }
            ) | (Self::AccessSecret, Resource::SecretPath { .. })
                | (Self::ApprovePlan, Resource::Plan { .. })
                | (Self::AccessCluster, Resource::Cluster { .. })
        )
    }

    /// The kind of resource it applies to, as Cedar names it.
    pub fn resource_type(&self) -> &'static str {
        match self {
            Self::AccessNode { .. } | Self::RunTask { .. } => "Node",
            Self::AccessSecret => "SecretPath",
            Self::ApprovePlan => "Plan",
            Self::AccessCluster => "Cluster",
        }
    }

    /// The action's Cedar id (`AccessNode`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::AccessNode { .. } => "AccessNode",
            Self::RunTask { .. } => "RunTask",
            Self::AccessSecret => "AccessSecret",
            Self::ApprovePlan => "ApprovePlan",
            Self::AccessCluster => "AccessCluster",
        }
    }
}

/// What it is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A node, with its attributes and labels.
    Node {
        /// Node id.
        id: String,
        /// Node name.
        name: String,
        /// Org id.
        org: String,
        /// Labels (Cedar tags).
        labels: BTreeMap<String, String>,
    },
    /// `bucket/key` of a secret bucket.
    SecretPath {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A reviewed change's plan.
    Plan {
        /// Plan id.
        id: String,
        /// Change kind.
        kind: String,
        /// Target node id.
        node: String,
        /// Who wrote it.
        author: String,
    },
    /// A cluster.
    Cluster {
        /// Its name.
        name: String,
    },
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    /// Who.
    pub principal: Principal,
    /// Does what.
    pub action: Action,
    /// To what.
    pub resource: Resource,
}

/// The answer, with the policies (document names) that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allow: bool,
    /// Documents whose statements were satisfied and decided: the forbids for a deny
    /// they caused, the permits for an allow. Empty for a default deny.
    pub determining: Vec<String>,
    /// Documents whose statements were evaluated (their scope matched).
    pub considered: Vec<String>,
    /// Statements that failed to evaluate (they count as not satisfied), as
    /// `document: message`.
    pub errors: Vec<String>,
}

fn type_name(name: &str) -> EntityTypeName {
    static TYPES: LazyLock<HashMap<&'static str, EntityTypeName>> = LazyLock::new(|| {
        [
            "User",
            "Group",
            "Node",
            "Cluster",
            "Service",
            "SecretPath",
            "Plan",
            "Action",
        ]
        .into_iter()
        .map(|t| {
            (
                t,
                EntityTypeName::from_str(&format!("Lattice::{t}")).expect("a valid type name"),
            )
        })
        .collect()
    });
    TYPES.get(name).cloned().expect("a known entity type")
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(ty), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

impl Principal {
    /// Its Cedar uid.
    pub fn uid(&self) -> EntityUid {
        match self {
            Self::User { name, .. } => uid("User", name),
            Self::Service { kind, name, .. } => uid("Service", &service_id(kind, name)),
        }
    }

    fn ancestors(&self) -> Vec<EntityUid> {
        match self {
            Self::User { groups, .. } => groups.iter().map(|g| uid("Group", g)).collect(),
            Self::Service { .. } => Vec::new(),
        }
    }

    fn entity(&self) -> Entity {
        let result = match self {
            Self::User { org, .. } => Entity::new(
                self.uid(),
                [("org".to_owned(), string(org))].into_iter().collect(),
                self.ancestors().into_iter().collect(),
            ),
            Self::Service { kind, name, org } => Entity::new(
                self.uid(),
                [
                    ("kind".to_owned(), string(kind)),
                    ("name".to_owned(), string(name)),
                    ("org".to_owned(), string(org)),
                ]
                .into_iter()
                .collect(),
                Default::default(),
            ),
        };
        result.expect("string attributes always evaluate")
    }
}

/// A service principal's id: `token:<name>` for a storage token, `node:<id>` for a node.
pub fn service_id(kind: &str, name: &str) -> String {
    match kind {
        "storage_token" => format!("token:{name}"),
        "node" => format!("node:{name}"),
        other => format!("{other}:{name}"),
    }
}

impl Action {
    /// Its Cedar uid.
    pub fn uid(&self) -> EntityUid {
        uid("Action", self.name())
    }

    fn context(&self) -> Context {
        let pairs: Vec<(String, RestrictedExpression)> = match self {
            Self::AccessNode { port, protocol } => vec![
                (
                    "port".into(),
                    RestrictedExpression::new_long(i64::from(*port)),
                ),
                ("protocol".into(), string(protocol.as_str())),
            ],
            Self::RunTask { kind } => vec![("kind".into(), string(kind))],
            Self::AccessSecret | Self::ApprovePlan | Self::AccessCluster => Vec::new(),
        };
        Context::from_pairs(pairs).expect("distinct context keys")
    }
}

impl Resource {
    /// Its Cedar uid.
    pub fn uid(&self) -> EntityUid {
        match self {
            Self::Node { id, .. } => uid("Node", id),
            Self::SecretPath { bucket, key } => uid("SecretPath", &format!("{bucket}/{key}")),
            Self::Plan { id, .. } => uid("Plan", id),
            Self::Cluster { name } => uid("Cluster", name),
        }
    }

    fn entity(&self) -> Entity {
        let result = match self {
            Self::Node {
                name, org, labels, ..
            } => Entity::new_with_tags(
                self.uid(),
                [
                    ("name".to_owned(), string(name)),
                    ("org".to_owned(), string(org)),
                ],
                [],
                labels.iter().map(|(k, v)| (k.clone(), string(v))),
            ),
            Self::SecretPath { bucket, key } => Entity::new(
                self.uid(),
                [
                    ("path".to_owned(), string(&format!("{bucket}/{key}"))),
                    ("bucket".to_owned(), string(bucket)),
                    ("key".to_owned(), string(key)),
                ]
                .into_iter()
                .collect(),
                Default::default(),
            ),
            Self::Plan {
                kind, node, author, ..
            } => Entity::new(
                self.uid(),
                [
                    ("kind".to_owned(), string(kind)),
                    ("node".to_owned(), string(node)),
                    ("author".to_owned(), string(author)),
                ]
                .into_iter()
                .collect(),
                Default::default(),
            ),
            Self::Cluster { name } => Entity::new(
                self.uid(),
                [("name".to_owned(), string(name))].into_iter().collect(),
                Default::default(),
            ),
        };
        result.expect("string attributes always evaluate")
    }
}

impl Query {
    /// The Cedar request and the entities it needs.
    fn cedar(&self) -> (Request, Entities) {
        let request = Request::new(
            self.principal.uid(),
            self.action.uid(),
            self.resource.uid(),
            self.action.context(),
            None,
        )
        .expect("requests are built without a schema to check against");
        let entities =
            Entities::from_entities([self.principal.entity(), self.resource.entity()], None)
                .expect("two distinct entities");
        (request, entities)
    }
}

impl Facts for Query {
    fn fact(&self, fact: &Fact) -> Option<Seen<'_>> {
        match fact {
            Fact::Context(name) => match (&self.action, name.as_str()) {
                (Action::AccessNode { port, .. }, "port") => Some(Seen::Long(i64::from(*port))),
                (Action::AccessNode { protocol, .. }, "protocol") => {
                    Some(Seen::Str(protocol.as_str()))
                }
                (Action::RunTask { kind }, "kind") => Some(Seen::Str(kind)),
                _ => None,
            },
            // The attributes `Resource::entity` gives each kind of resource.
            Fact::Resource(name) => match (&self.resource, name.as_str()) {
                (Resource::Node { name, .. }, "name") => Some(Seen::Str(name)),
                (Resource::Node { org, .. }, "org") => Some(Seen::Str(org)),
                (Resource::SecretPath { bucket, key }, "path") => Some(Seen::Path(bucket, key)),
                (Resource::SecretPath { bucket, .. }, "bucket") => Some(Seen::Str(bucket)),
                (Resource::SecretPath { key, .. }, "key") => Some(Seen::Str(key)),
                (Resource::Plan { kind, .. }, "kind") => Some(Seen::Str(kind)),
                (Resource::Plan { node, .. }, "node") => Some(Seen::Str(node)),
                (Resource::Plan { author, .. }, "author") => Some(Seen::Str(author)),
                (Resource::Cluster { name }, "name") => Some(Seen::Str(name)),
                _ => None,
            },
            Fact::Tag(tag) => match &self.resource {
                Resource::Node { labels, .. } => labels.get(tag).map(|v| Seen::Str(v)),
                _ => None,
            },
        }
    }

    fn has_tag(&self, name: &str) -> bool {
        matches!(&self.resource, Resource::Node { labels, .. } if labels.contains_key(name))
    }
}

/// The entity types of the schema, as the index files them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Group,
    Node,
    Cluster,
    Service,
    SecretPath,
    Plan,
    Action,
}

const KINDS: usize = 8;

impl Kind {
    /// The schema type `t` names (None: a type outside the schema).
    fn of(t: &EntityTypeName) -> Option<Self> {
        Some(match t.to_string().strip_prefix("Lattice::")? {
            "User" => Self::User,
            "Group" => Self::Group,
            "Node" => Self::Node,
            "Cluster" => Self::Cluster,
            "Service" => Self::Service,
            "SecretPath" => Self::SecretPath,
            "Plan" => Self::Plan,
            "Action" => Self::Action,
            _ => return None,
        })
    }
}

/// Every entity a statement's scope names, as a small number.
#[derive(Debug, Default)]
struct Interned {
    ids: [HashMap<String, u32>; KINDS],
    next: u32,
}

impl Interned {
    fn intern(&mut self, u: &EntityUid) -> Option<u32> {
        let kind = Kind::of(u.type_name())?;
        let next = &mut self.next;
        Some(
            *self.ids[kind as usize]
                .entry(u.id().unescaped().to_owned())
                .or_insert_with(|| {
                    *next += 1;
                    *next
                }),
        )
    }

    fn get(&self, kind: Kind, id: &str) -> Option<u32> {
        self.ids[kind as usize].get(id).copied()
    }
}

/// An entity of a request, as the index sees it.
#[derive(Debug)]
struct Who {
    kind: Kind,
    /// Its number, None when no statement names it.
    id: Option<u32>,
    /// The numbers of its ancestors that statements name (a user's groups).
    up: Vec<u32>,
}

/// A scope: what one dimension of a statement's head names.
#[derive(Debug, Clone)]
enum Scope {
    Any,
    /// `==` this entity.
    Eq(u32),
    /// `in` this entity (or is it).
    In(u32),
    /// `is` this type.
    Is(Kind),
    /// `is` this type `in` this entity.
    IsIn(Kind, u32),
    /// Names a type outside the schema: matches nothing (validation refuses it).
    Never,
}

impl Scope {
    fn new(c: Constraint, names: &mut Interned) -> Self {
        let kind = |t: &EntityTypeName| Kind::of(t);
        let built = match c {
            Constraint::Any => Some(Self::Any),
            Constraint::Eq(u) => names.intern(&u).map(Self::Eq),
            Constraint::In(u) => names.intern(&u).map(Self::In),
            Constraint::Is(t) => kind(&t).map(Self::Is),
            Constraint::IsIn(t, u) => kind(&t)
                .zip(names.intern(&u))
                .map(|(k, u)| Self::IsIn(k, u)),
        };
        built.unwrap_or(Self::Never)
    }

    /// Whether `who` is in this scope.
    fn matches(&self, who: &Who) -> bool {
        let is_or_in = |u: u32| who.id == Some(u) || who.up.contains(&u);
        match *self {
            Self::Any => true,
            Self::Eq(u) => who.id == Some(u),
            Self::In(u) => is_or_in(u),
            Self::Is(k) => k == who.kind,
            Self::IsIn(k, u) => k == who.kind && is_or_in(u),
            Self::Never => false,
        }
    }
}

/// A principal or resource constraint, whichever it was.
enum Constraint {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for Constraint {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Self::Any,
            PrincipalConstraint::Eq(u) => Self::Eq(u),
            PrincipalConstraint::In(u) => Self::In(u),
            PrincipalConstraint::Is(t) => Self::Is(t),
            PrincipalConstraint::IsIn(t, u) => Self::IsIn(t, u),
        }
    }
}

impl From<ResourceConstraint> for Constraint {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Self::Any,
            ResourceConstraint::Eq(u) => Self::Eq(u),
            ResourceConstraint::In(u) => Self::In(u),
            ResourceConstraint::Is(t) => Self::Is(t),
            ResourceConstraint::IsIn(t, u) => Self::IsIn(t, u),
        }
    }
}

/// Statements filed by the entities one dimension of their scope names. Each
/// statement is filed once per dimension.
#[derive(Debug, Default)]
struct Dimension {
    any: Vec<usize>,
    by_id: HashMap<u32, Vec<usize>>,
    by_kind: [Vec<usize>; KINDS],
}

impl Dimension {
    fn file(&mut self, scope: &Scope, i: usize) {
        match *scope {
            Scope::Any => self.any.push(i),
            Scope::Eq(u) | Scope::In(u) | Scope::IsIn(_, u) => {
                self.by_id.entry(u).or_default().push(i)
            }
            Scope::Is(k) => self.by_kind[k as usize].push(i),
            Scope::Never => {}
        }
    }

    /// The buckets that may hold statements matching `who` (none twice).
    fn buckets<'a>(&'a self, who: &Who) -> Vec<&'a [usize]> {
        let mut out = vec![
            self.any.as_slice(),
            self.by_kind[who.kind as usize].as_slice(),
        ];
        for u in who.id.iter().chain(&who.up) {
            if let Some(b) = self.by_id.get(u) {
                out.push(b);
            }
        }
        out
    }
}

#[derive(Debug)]
struct Statement {
    /// Index into `Engine::docs`.
    doc: usize,
    effect: Effect,
    /// The statement alone, ready for Cedar.
    alone: PolicySet,
    principal: Scope,
    /// The actions it names (None: any).
    actions: Option<Vec<u32>>,
    resource: Scope,
    /// What its `when` clauses require of a request.
    guards: Vec<Guard>,
    /// Its scope and guards are its whole condition: satisfied exactly when they
    /// hold, so Cedar need not evaluate it.
    exact: bool,
}

#[derive(Debug)]
struct Doc {
    name: String,
    expires_at_ms: Option<i64>,
}

/// One org's enabled policies, ready to decide.
#[derive(Debug, Default)]
pub struct Engine {
    docs: Vec<Doc>,
    statements: Vec<Statement>,
    names: Interned,
    principals: Dimension,
    actions_any: Vec<usize>,
    actions: HashMap<u32, Vec<usize>>,
    resources: Dimension,
    /// Every statement in one set, for the unindexed answer.
    whole: PolicySet,
}

impl Engine {
    /// An engine over `docs` (each with its compiled statements). Disabled documents
    /// are left out; expired ones are skipped at decision time.
    pub fn new(docs: impl IntoIterator<Item = (PolicyDoc, Vec<Policy>)>) -> Self {
        let mut engine = Self::default();
        let mut docs: Vec<_> = docs.into_iter().filter(|(d, _)| d.enabled).collect();
        // Higher priority first, then by name: the order statements are evaluated
        // and reported in.
        docs.sort_by(|(a, _), (b, _)| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
        for (doc, statements) in docs {
            let d = engine.docs.len();
            engine.docs.push(Doc {
                name: doc.name,
                expires_at_ms: doc.expires_at_ms,
            });
            for policy in statements {
                let i = engine.statements.len();
                let principal = Scope::new(policy.principal_constraint().into(), &mut engine.names);
                let resource = Scope::new(policy.resource_constraint().into(), &mut engine.names);
                let actions = match policy.action_constraint() {
                    ActionConstraint::Any => None,
                    ActionConstraint::Eq(a) => Some(vec![a]),
                    ActionConstraint::In(list) => Some(list),
                }
                .map(|list| {
                    let mut ids: Vec<u32> =
                        list.iter().filter_map(|a| engine.names.intern(a)).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                });
                engine.principals.file(&principal, i);
                engine.resources.file(&resource, i);
                match &actions {
                    None => engine.actions_any.push(i),
                    Some(ids) => {
                        for a in ids {
                            engine.actions.entry(*a).or_default().push(i);
                        }
                    }
                }
                let _ = engine.whole.add(policy.clone());
                let (guards, exact) = guards_of(&policy);
                engine.statements.push(Statement {
                    doc: d,
                    effect: policy.effect(),
                    guards,
                    exact,
                    alone: PolicySet::from_policies([policy]).expect("one policy"),
                    principal,
                    actions,
                    resource,
                });
            }
        }
        engine
    }

    /// How many statements take part.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether no statement takes part (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    fn live(&self, doc: usize, now_ms: i64) -> bool {
        self.docs[doc].expires_at_ms.is_none_or(|at| now_ms < at)
    }

    /// The request's principal, action and resource as the index knows them.
    fn asked(&self, q: &Query) -> (Who, Option<u32>, Who) {
        let names = &self.names;
        let principal = match &q.principal {
            Principal::User { name, groups, .. } => {
                let mut up: Vec<u32> = groups
                    .iter()
                    .filter_map(|g| names.get(Kind::Group, g))
                    .collect();
                up.sort_unstable();
                up.dedup();
                Who {
                    kind: Kind::User,
                    id: names.get(Kind::User, name),
                    up,
                }
            }
            Principal::Service { kind, name, .. } => Who {
                kind: Kind::Service,
                id: names.get(Kind::Service, &service_id(kind, name)),
                up: Vec::new(),
            },
        };
        let (kind, id) = match &q.resource {
            Resource::Node { id, .. } => (Kind::Node, names.get(Kind::Node, id)),
            Resource::SecretPath { bucket, key } => (
                Kind::SecretPath,
                names.get(Kind::SecretPath, &format!("{bucket}/{key}")),
            ),
            Resource::Plan { id, .. } => (Kind::Plan, names.get(Kind::Plan, id)),
            Resource::Cluster { name } => (Kind::Cluster, names.get(Kind::Cluster, name)),
        };
        let resource = Who {
            kind,
            id,
            up: Vec::new(),
        };
        (
            principal,
            names.get(Kind::Action, q.action.name()),
            resource,
        )
    }

    /// The statements whose scope matches `q` and that are live, in no particular
    /// order.
    fn candidates(&self, q: &Query, now_ms: i64) -> Vec<usize> {
        let (p, a, r) = self.asked(q);
        let by_p = self.principals.buckets(&p);
        let by_r = self.resources.buckets(&r);
        let by_a: Vec<&[usize]> = vec![
            self.actions_any.as_slice(),
            a.and_then(|a| self.actions.get(&a))
                .map_or(&[][..], Vec::as_slice),
        ];
        let size = |b: &[&[usize]]| b.iter().map(|x| x.len()).sum::<usize>();
        let smallest = [by_p, by_r, by_a]
            .into_iter()
            .min_by_key(|b| size(b))
            .expect("three dimensions");
        smallest
            .iter()
            .flat_map(|b| b.iter().copied())
            .filter(|&i| {
                let s = &self.statements[i];
                s.principal.matches(&p)
                    && s.resource.matches(&r)
                    && s.actions
                        .as_ref()
                        .is_none_or(|ids| a.is_some_and(|a| ids.binary_search(&a).is_ok()))
                    && self.live(s.doc, now_ms)
            })
            .collect()
    }

    /// Decide `q` evaluating only the statements that can apply: those whose scope
    /// matches and whose guards hold; Cedar evaluates the ones whose condition is
    /// more than their guards.
    pub fn decide(&self, q: &Query, now_ms: i64) -> Decision {
        let candidates = self.candidates(q, now_ms);
        if candidates.is_empty() {
            return Decision {
                allow: false,
                determining: Vec::new(),
                considered: Vec::new(),
                errors: Vec::new(),
            };
        }
        let mut cedar = None;
        let authorizer = Authorizer::new();
        let (mut forbids, mut permits, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &candidates {
            let s = &self.statements[i];
            if !s.guards.iter().all(|g| g.holds(q)) {
                continue;
            }
            let satisfied = s.exact || {
                let (request, entities) = cedar.get_or_insert_with(|| q.cedar());
                let answer = authorizer.is_authorized(request, &s.alone, entities);
                for e in answer.diagnostics().errors() {
                    errors.push(format!("{}: {e}", self.docs[s.doc].name));
                }
                answer.diagnostics().reason().next().is_some()
            };
            if satisfied {
                match s.effect {
                    Effect::Forbid => forbids.push(s.doc),
                    Effect::Permit => permits.push(s.doc),
                }
            }
        }
        let considered = self.names(candidates.iter().map(|&i| self.statements[i].doc));
        let allow = forbids.is_empty() && !permits.is_empty();
        let determining = if forbids.is_empty() {
            self.names(permits)
        } else {
            self.names(forbids)
        };
        Decision {
            allow,
            determining,
            considered,
            errors,
        }
    }

    /// The statements live at `now_ms` in one set, for [`Engine::decide_unindexed`].
    pub fn live_set(&self, now_ms: i64) -> std::borrow::Cow<'_, PolicySet> {
        if self
            .docs
            .iter()
            .all(|d| d.expires_at_ms.is_none_or(|at| now_ms < at))
        {
            return std::borrow::Cow::Borrowed(&self.whole);
        }
        let live = PolicySet::from_policies(
            self.statements
                .iter()
                .filter(|s| self.live(s.doc, now_ms))
                .flat_map(|s| s.alone.policies().cloned()),
        )
        .expect("distinct ids");
        std::borrow::Cow::Owned(live)
    }

    /// Decide `q` the way Cedar's `Authorizer` does over a whole set (`live_set`):
    /// every statement evaluated. For comparison (benchmarks, tests).
    pub fn decide_unindexed(&self, set: &PolicySet, q: &Query) -> Decision {
        let (request, entities) = q.cedar();
        let answer = Authorizer::new().is_authorized(&request, set, &entities);
        let doc_index = |name: &str| self.docs.iter().position(|d| d.name == name);
        let determining = self.names(
            answer
                .diagnostics()
                .reason()
                .filter_map(|id| doc_index(doc_of(id))),
        );
        Decision {
            allow: answer.decision() == CedarDecision::Allow,
            determining,
            considered: Vec::new(),
            errors: answer
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        }
    }

    /// Document names of `docs`, once each, in evaluation order.
    fn names(&self, docs: impl IntoIterator<Item = usize>) -> Vec<String> {
        let mut d: Vec<usize> = docs.into_iter().collect();
        d.sort_unstable();
        d.dedup();
        d.into_iter().map(|i| self.docs[i].name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};

    use super::*;
    use crate::model::compile;

    fn doc(name: &str, text: &str) -> (PolicyDoc, Vec<Policy>) {
        let statements = compile(name, text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        (
            PolicyDoc {
                name: name.into(),
                text: text.into(),
                enabled: true,
                priority: 0,
                description: String::new(),
                expires_at_ms: None,
            },
            statements,
        )
    }

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal::User {
            name: name.into(),
            org: "org-1".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn node(id: &str, labels: &[(&str, &str)]) -> Resource {
        Resource::Node {
            id: id.into(),
            name: format!("name-{id}"),
            org: "org-1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn access(port: u16) -> Action {
        Action::AccessNode {
            port,
            protocol: Protocol::Http,
        }
    }

    fn ask(principal: Principal, action: Action, resource: Resource) -> Query {
        Query {
            principal,
            action,
            resource,
        }
    }

    #[test]
    fn default_deny_permit_and_forbid_wins() {
        let e = Engine::new([]);
        let q = ask(user("alice", &[]), access(8080), node("n1", &[]));
        let d = e.decide(&q, 0);
        assert!(!d.allow && d.determining.is_empty());

        let e = Engine::new([
            doc(
                "alice-8080",
                r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"AccessNode", resource) when { context.port == 8080 };"#,
            ),
            doc(
                "no-ssh",
                r#"forbid(principal, action == Lattice::Action::"AccessNode", resource) when { context.port == 22 };"#,
            ),
            doc(
                "admins",
                r#"permit(principal in Lattice::Group::"admins", action, resource);"#,
            ),
        ]);
        let d = e.decide(&q, 0);
        assert!(d.allow);
        assert_eq!(d.determining, ["alice-8080"]);
        assert!(
            !e.decide(&ask(user("alice", &[]), access(80), node("n1", &[])), 0)
                .allow
        );
        let admin = user("root", &["admins"]);
        assert!(
            e.decide(&ask(admin.clone(), access(80), node("n1", &[])), 0)
                .allow
        );
        let d = e.decide(&ask(admin, access(22), node("n1", &[])), 0);
        assert!(!d.allow);
        assert_eq!(d.determining, ["no-ssh"]);
        assert_eq!(d.considered, ["admins", "no-ssh"]);
    }

    #[test]
    fn labels_disabled_and_expired_policies() {
        let (mut off, s) = doc(
            "off",
            r#"permit(principal, action == Lattice::Action::"RunTask", resource);"#,
        );
        off.enabled = false;
        let (mut soon, s2) = doc(
            "until-noon",
            r#"permit(principal == Lattice::User::"bob", action == Lattice::Action::"RunTask", resource) when { context.kind == "exec" };"#,
        );
        soon.expires_at_ms = Some(1_000);
        let e = Engine::new([
            (off, s),
            (soon, s2),
            doc(
                "prod-web",
                r#"permit(principal, action == Lattice::Action::"AccessNode", resource) when { resource.hasTag("env") && resource.getTag("env") == "prod" && context.protocol == "http" };"#,
            ),
        ]);
        let prod = node("n1", &[("env", "prod")]);
        assert!(
            e.decide(&ask(user("x", &[]), access(80), prod.clone()), 0)
                .allow
        );
        assert!(
            !e.decide(
                &ask(user("x", &[]), access(80), node("n2", &[("env", "dev")])),
                0
            )
            .allow
        );
        let tcp = Action::AccessNode {
            port: 80,
            protocol: Protocol::Tcp,
        };
        assert!(!e.decide(&ask(user("x", &[]), tcp, prod.clone()), 0).allow);
        let exec = Action::RunTask {
            kind: "exec".into(),
        };
        assert!(
            e.decide(&ask(user("bob", &[]), exec.clone(), prod.clone()), 999)
                .allow
        );
        assert!(
            !e.decide(&ask(user("bob", &[]), exec.clone(), prod.clone()), 1_000)
                .allow
        );
        assert!(!e.decide(&ask(user("carol", &[]), exec, prod), 0).allow);
    }

    /// A random policy set over a small world, and random questions about it.
    struct World {
        rng: StdRng,
    }

    impl World {
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.rng.random_range(0..from.len())]
        }

        fn user(&mut self) -> String {
            format!("u{}", self.rng.random_range(0..20))
        }

        fn node_id(&mut self) -> String {
            format!("n{}", self.rng.random_range(0..30))
        }

        fn group(&mut self) -> String {
            format!("g{}", self.rng.random_range(0..5))
        }

        fn statement(&mut self) -> String {
            let port = self.pick(&["22", "80", "443", "8080"]);
            let env = self.pick(&["prod", "dev", "staging"]);
            let kind = self.pick(&["exec", "refresh", "reboot"]);
            let (u, n, g) = (self.user(), self.node_id(), self.group());
            let effect = if self.rng.random_bool(0.2) {
                "forbid"
            } else {
                "permit"
            };
            match self.rng.random_range(0..14) {
                0 => format!(
                    r#"{effect}(principal == Lattice::User::"{u}", action == Lattice::Action::"AccessNode", resource == Lattice::Node::"{n}") when {{ context.port == {port} }};"#
                ),
                1 => format!(
                    r#"{effect}(principal in Lattice::Group::"{g}", action == Lattice::Action::"RunTask", resource) when {{ context.kind == "{kind}" }};"#
                ),
                2 => format!(
                    r#"{effect}(principal, action == Lattice::Action::"AccessNode", resource) when {{ resource.hasTag("env") && resource.getTag("env") == "{env}" && context.port == {port} }};"#
                ),
                3 => format!(
                    r#"{effect}(principal == Lattice::User::"{u}", action, resource == Lattice::Node::"{n}");"#
                ),
                4 => format!(
                    r#"{effect}(principal == Lattice::Service::"token:t{}", action == Lattice::Action::"AccessSecret", resource) when {{ resource.bucket == "b{}" }};"#,
                    self.rng.random_range(0..4),
                    self.rng.random_range(0..4)
                ),
                5 => format!(
                    r#"{effect}(principal, action == Lattice::Action::"AccessSecret", resource) when {{ resource.path like "*/k{}" }};"#,
                    self.rng.random_range(0..6)
                ),
                6 => format!(
                    r#"{effect}(principal is Lattice::User, action in [Lattice::Action::"AccessNode", Lattice::Action::"RunTask"], resource is Lattice::Node) when {{ resource.name == "name-{n}" }};"#
                ),
                7 => format!(
                    r#"{effect}(principal is Lattice::User in Lattice::Group::"{g}", action, resource == Lattice::Node::"{n}");"#
                ),
                8 => format!(
                    r#"{effect}(principal in Lattice::Group::"{g}", action == Lattice::Action::"AccessNode", resource) when {{ context.protocol == "tcp" }};"#
                ),
                // Shapes the guards read, and some they must leave to Cedar.
                9 => format!(
                    r#"{effect}(principal, action == Lattice::Action::"AccessNode", resource) when {{ [{port}, 443].contains(context.port) && resource.hasTag("env") && "{env}" == resource.getTag("env") }};"#
                ),
                10 => format!(
                    r#"{effect}(principal, action, resource) when {{ context has port && context.port == {port} }} unless {{ context.protocol == "http" }};"#
                ),
                11 => format!(
                    r#"{effect}(principal == Lattice::User::"{u}", action, resource) when {{ (context has port && context.port == {port}) || (resource has name && resource.name == "name-{n}") }};"#
                ),
                12 => format!(
                    r#"{effect}(principal, action == Lattice::Action::"AccessSecret", resource) when {{ resource.path == "b{}/k{}" && resource.key == "k{}" }};"#,
                    self.rng.random_range(0..4),
                    self.rng.random_range(0..6),
                    self.rng.random_range(0..6)
                ),
                _ => format!(
                    r#"{effect}(principal, action, resource is Lattice::Node) when {{ resource.hasTag("env") && resource.org == "org-1" && !(context has kind && context.kind == "{kind}") }};"#
                ),
            }
        }

        fn query(&mut self) -> Query {
            let principal = if self.rng.random_bool(0.8) {
                let groups: Vec<String> = (0..self.rng.random_range(0..3))
                    .map(|_| self.group())
                    .collect();
                Principal::User {
                    name: self.user(),
                    org: "org-1".into(),
                    groups,
                }
            } else {
                Principal::Service {
                    kind: "storage_token".into(),
                    name: format!("t{}", self.rng.random_range(0..4)),
                    org: "org-1".into(),
                }
            };
            let secret =
                matches!(principal, Principal::Service { .. }) || self.rng.random_bool(0.1);
            let (action, resource) = if secret {
                (
                    Action::AccessSecret,
                    Resource::SecretPath {
                        bucket: format!("b{}", self.rng.random_range(0..4)),
                        key: format!("k{}", self.rng.random_range(0..6)),
                    },
                )
            } else {
                let id = self.node_id();
                let mut labels = BTreeMap::new();
                if self.rng.random_bool(0.7) {
                    labels.insert(
                        "env".to_owned(),
                        self.pick(&["prod", "dev", "staging"]).to_owned(),
                    );
                }
                let action = if self.rng.random_bool(0.6) {
                    Action::AccessNode {
                        port: self.pick(&["22", "80", "443", "8080"]).parse().unwrap(),
                        protocol: if self.rng.random_bool(0.5) {
                            Protocol::Http
                        } else {
                            Protocol::Tcp
                        },
                    }
                } else {
                    Action::RunTask {
                        kind: self.pick(&["exec", "refresh", "reboot"]).to_owned(),
                    }
                };
                (
                    action,
                    Resource::Node {
                        name: format!("name-{id}"),
                        id,
                        org: "org-1".into(),
                        labels,
                    },
                )
            };
            Query {
                principal,
                action,
                resource,
            }
        }
    }

    /// The index answers what Cedar answers over the whole set: same decision, same
    /// determining policies, on 100,000 random questions over random policy sets
    /// (some disabled, some expired, some with several statements).
    #[test]
    fn indexed_and_unindexed_agree() {
        let mut w = World {
            rng: StdRng::seed_from_u64(0x01a7_71ce),
        };
        let (sets, per_set) = (20, 5_000);
        let mut allowed = 0;
        for set in 0..sets {
            let docs: Vec<(PolicyDoc, Vec<Policy>)> = (0..80)
                .map(|i| {
                    let n = if w.rng.random_bool(0.1) { 2 } else { 1 };
                    let text: Vec<String> = (0..n).map(|_| w.statement()).collect();
                    let (mut d, s) = doc(&format!("p{set}-{i}"), &text.join("\n"));
                    d.enabled = w.rng.random_bool(0.9);
                    d.priority = w.rng.random_range(-2..3);
                    if w.rng.random_bool(0.1) {
                        d.expires_at_ms = Some(w.rng.random_range(0..2_000));
                    }
                    (d, s)
                })
                .collect();
            let engine = Engine::new(docs);
            let instants: Vec<(i64, PolicySet)> = [0, 500, 1_000, 1_999, 5_000]
                .into_iter()
                .map(|t| (t, engine.live_set(t).into_owned()))
                .collect();
            for _ in 0..per_set {
                let q = w.query();
                let (now, live) = &instants[w.rng.random_range(0..instants.len())];
                let now = *now;
                let fast = engine.decide(&q, now);
                let slow = engine.decide_unindexed(live, &q);
                assert_eq!(
                    (fast.allow, &fast.determining),
                    (slow.allow, &slow.determining),
                    "{q:?} at {now}"
                );
                allowed += usize::from(fast.allow);
            }
        }
        // The sets are neither all-allow nor all-deny.
        let total = sets * per_set;
        assert!(
            allowed > total / 20 && allowed < total * 19 / 20,
            "{allowed}/{total}"
        );
    }
}
