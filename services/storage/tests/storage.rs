//! The storage service's behaviour, written once and run on SQLite always and on
//! Postgres when `LATTICE_TEST_DATABASE_URL` is set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::db::{self, Backend, testing};
use lattice_proto::storage::v1 as pb;
use lattice_storage::blobs::Blobs;
use lattice_storage::input::{KvCondition, KvEntry, KvPut, NewBinding, NewBucket, NewToken};
use lattice_storage::model::BucketName;
use lattice_storage::service::{KvPage, NewFile, Resolution, SecretPolicy, SecretReader, Secrets};
use lattice_storage::{Limits, Storage, StorageError};

struct Env {
    storage: Storage,
    db: db::Db,
    /// Who may read which secret: `"<reader>:<bucket>/<key>"`, the reader being
    /// `user:<username>` or `token:<name>`.
    readers: Arc<Mutex<HashSet<String>>>,
    _db: Option<testing::tempfile_guard::Guard>,
    _blobs: testing::tempfile_guard::Guard,
}

/// The storage crate's stand-in for the policy service's `AccessSecret` decision
/// (the real one decides in `crates/server/tests/secrets.rs`): allows exactly the
/// listed readers.
struct ListedReaders(Arc<Mutex<HashSet<String>>>);

#[async_trait::async_trait]
impl SecretPolicy for ListedReaders {
    async fn may_read(
        &self,
        ctx: &RequestContext,
        reader: SecretReader<'_>,
        bucket: &str,
        key: &str,
    ) -> Result<(), StorageError> {
        let who = match reader {
            SecretReader::Caller => format!("user:{}", ctx.principal.username),
            SecretReader::StorageToken { name, .. } => format!("token:{name}"),
        };
        if self
            .0
            .lock()
            .unwrap()
            .contains(&format!("{who}:{bucket}/{key}"))
        {
            Ok(())
        } else {
            Err(StorageError::Forbidden(format!(
                "{who} may not read {bucket}/{key}"
            )))
        }
    }
}

async fn env(backend: Backend) -> Env {
    let (db, guard) = testing::fresh(backend).await;
    db::migrate(&db, &lattice_storage::migration_sets(), true)
        .await
        .unwrap();
    let sealer =
        lattice_core::crypto::Sealer::open(&db, &lattice_core::crypto::MasterKey::generate())
            .await
            .unwrap();
    let readers = Arc::new(Mutex::new(HashSet::new()));
    let blobs_dir = testing::tempfile_guard::Guard::new();
    let storage = Storage::new(
        lattice_storage::store::Store::new(db.clone()),
        Blobs::local(&blobs_dir.path).unwrap(),
        Cache::local(),
        Limits::default(),
        Secrets::new(sealer, Arc::new(ListedReaders(readers.clone()))),
    );
    Env {
        storage,
        db,
        readers,
        _db: guard,
        _blobs: blobs_dir,
    }
}

fn op(org: &str, scopes: &[&str]) -> Principal {
    Principal {
        sub: format!("user-{org}"),
        username: format!("user-{org}"),
        org_id: org.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        auth: AuthMethod::Token,
        credential_id: "t".into(),
    }
}

fn gateway() -> Principal {
    Principal::service("gateway")
}

/// A request from `p`, with no client IP.
fn ctx(p: &Principal) -> RequestContext {
    RequestContext::internal(p.clone())
}

/// A bucket to create, as the gRPC adapter validates it.
fn try_bucket(name: &str, surface: &str) -> Result<NewBucket, StorageError> {
    NewBucket::try_from(pb::CreateBucketRequest {
        name: name.into(),
        surface: surface.into(),
        ..Default::default()
    })
}

/// A valid bucket to create.
fn bucket(name: &str, surface: &str) -> NewBucket {
    try_bucket(name, surface).expect("a valid bucket")
}

/// A valid write of `key` in `bucket`.
fn write(bucket: &str, key: &str, value_json: &str, condition: KvCondition, ttl_s: i64) -> KvPut {
    KvPut {
        bucket: BucketName::parse(bucket).expect("a valid bucket name"),
        entry: KvEntry::parse(key, value_json, condition, ttl_s).expect("a valid entry"),
    }
}

/// A binding to create, as the gRPC adapter validates it.
fn try_binding(host: &str, bucket: &str) -> Result<NewBinding, StorageError> {
    NewBinding::try_from(pb::CreateBindingRequest {
        host: host.into(),
        bucket: bucket.into(),
    })
}

/// A valid binding to create.
fn binding(host: &str, bucket: &str) -> NewBinding {
    try_binding(host, bucket).expect("a valid binding")
}

/// A storage token to create, as the gRPC adapter validates it.
fn try_token(
    surface: &str,
    access: &str,
    buckets: &[String],
    name: &str,
    expires_in_s: i64,
) -> Result<NewToken, StorageError> {
    NewToken::try_from(pb::CreateStorageTokenRequest {
        surface: surface.into(),
        access: access.into(),
        buckets: buckets.to_vec(),
        name: name.into(),
        expires_in_s,
    })
}

/// A valid storage token to create.
fn token(
    surface: &str,
    access: &str,
    buckets: &[String],
    name: &str,
    expires_in_s: i64,
) -> NewToken {
    try_token(surface, access, buckets, name, expires_in_s).expect("a valid token")
}

fn file(path: &str, data: &str) -> NewFile {
    NewFile {
        path: path.into(),
        content_type: String::new(),
        data: Bytes::from(data.to_owned()),
    }
}

async fn buckets_are_validated_unique_per_org_and_scoped(backend: Backend) {
    let e = env(backend).await;
    let admin = op("o1", &["*"]);
    e.storage
        .create_bucket(&ctx(&admin), bucket("site", "static"))
        .await
        .unwrap();
    assert!(matches!(
        e.storage
            .create_bucket(&ctx(&admin), bucket("site", "kv"))
            .await,
        Err(StorageError::AlreadyExists(_))
    ));
    assert!(matches!(
        try_bucket("Bad_Name", "kv"),
        Err(StorageError::Invalid { field: "name", .. })
    ));
    assert!(matches!(
        try_bucket("x", "blob"),
        Err(StorageError::Invalid {
            field: "surface",
            ..
        })
    ));
    // Another org may use the same name.
    e.storage
        .create_bucket(&ctx(&op("o2", &["*"])), bucket("site", "static"))
        .await
        .unwrap();
    // kv:admin cannot create static buckets; kv:write cannot create any.
    assert!(
        matches!(e.storage.create_bucket(&ctx(&op("o1", &["kv:admin"])), bucket("s2", "static")).await, Err(StorageError::MissingScope(s)) if s == "static:admin")
    );
    assert!(matches!(
        e.storage
            .create_bucket(&ctx(&op("o1", &["kv:write"])), bucket("k2", "kv"))
            .await,
        Err(StorageError::MissingScope(_))
    ));
    e.storage
        .create_bucket(&ctx(&op("o1", &["kv:admin"])), bucket("conf", "kv"))
        .await
        .unwrap();
    // Listing shows only the surfaces the caller may read, of its own org.
    let kv_reader = op("o1", &["kv:read"]);
    let names: Vec<String> = e
        .storage
        .list_buckets(&kv_reader, None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["conf"]);
    assert_eq!(e.storage.list_buckets(&admin, None).await.unwrap().len(), 2);
    assert!(matches!(
        e.storage
            .list_buckets(&op("o1", &["users:read"]), None)
            .await,
        Err(StorageError::MissingScope(_))
    ));
    // Delete needs admin of the surface.
    assert!(matches!(
        e.storage.delete_bucket(&ctx(&kv_reader), "conf").await,
        Err(StorageError::MissingScope(_))
    ));
    e.storage.delete_bucket(&ctx(&admin), "conf").await.unwrap();
    assert!(matches!(
        e.storage.delete_bucket(&ctx(&admin), "conf").await,
        Err(StorageError::NotFound(_))
    ));
}

async fn kv_conditional_writes_ttl_and_ordered_listing(backend: Backend) {
    let e = env(backend).await;
    let p = op("o1", &["*"]);
    e.storage
        .create_bucket(&ctx(&p), bucket("conf", "kv"))
        .await
        .unwrap();
    let v1 = e
        .storage
        .kv_put(
            &ctx(&p),
            write("conf", "site/title", "\"Lattice\"", KvCondition::None, 0),
        )
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let got = e
        .storage
        .kv_get(&ctx(&p), "conf", "site/title")
        .await
        .unwrap();
    assert_eq!((got.value.as_str(), got.version), ("\"Lattice\"", 1));
    // If-None-Match: * refuses an existing key; If-Match needs the current version.
    assert!(matches!(
        e.storage
            .kv_put(
                &ctx(&p),
                write("conf", "site/title", "1", KvCondition::Absent, 0)
            )
            .await,
        Err(StorageError::PreconditionFailed(_))
    ));
    assert!(matches!(
        e.storage
            .kv_put(
                &ctx(&p),
                write("conf", "site/title", "1", KvCondition::Version(7), 0)
            )
            .await,
        Err(StorageError::PreconditionFailed(_))
    ));
    let v2 = e
        .storage
        .kv_put(
            &ctx(&p),
            write(
                "conf",
                "site/title",
                "{\"a\": [1, 2]}",
                KvCondition::Version(1),
                0,
            ),
        )
        .await
        .unwrap();
    assert_eq!((v2.version, v2.value.as_str()), (2, "{\"a\":[1,2]}"));
    // Bad input names the field; limits give 413.
    assert!(matches!(
        KvEntry::parse("k", "{nope", KvCondition::None, 0),
        Err(StorageError::Invalid { field: "value", .. })
    ));
    assert!(matches!(
        KvEntry::parse(&"k".repeat(600), "1", KvCondition::None, 0),
        Err(StorageError::Invalid { field: "key", .. })
    ));
    let big = format!("\"{}\"", "x".repeat(600 * 1024));
    assert!(matches!(
        KvEntry::parse("k", &big, KvCondition::None, 0),
        Err(StorageError::TooLarge(_))
    ));
    // TTL: gone once expired, and then If-None-Match: * may create it again.
    e.storage
        .kv_put(&ctx(&p), write("conf", "tmp", "1", KvCondition::None, 1))
        .await
        .unwrap();
    assert!(e.storage.kv_get(&ctx(&p), "conf", "tmp").await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(matches!(
        e.storage.kv_get(&ctx(&p), "conf", "tmp").await,
        Err(StorageError::NotFound(_))
    ));
    e.storage
        .kv_put(&ctx(&p), write("conf", "tmp", "2", KvCondition::Absent, 0))
        .await
        .unwrap();
    assert!(e.storage.sweep_expired().await.is_ok());
    // Listing: key order (bytewise on both backends), prefix, cursor pages.
    for k in ["b", "a/2", "a/1", "a/10", "B", "ab"] {
        e.storage
            .kv_put(&ctx(&p), write("conf", k, "0", KvCondition::None, 0))
            .await
            .unwrap();
    }
    let KvPage {
        rows: page, next, ..
    } = e.storage.kv_list(&p, "conf", "a/", "", 2).await.unwrap();
    assert_eq!(
        page.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["a/1", "a/10"]
    );
    let KvPage {
        rows: page2,
        next: next2,
        ..
    } = e
        .storage
        .kv_list(&p, "conf", "a/", next.as_deref().unwrap(), 2)
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["a/2"]
    );
    assert!(next2.is_none());
    let all = e
        .storage
        .kv_list(&p, "conf", "", "", 100)
        .await
        .unwrap()
        .rows;
    assert_eq!(
        all.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        vec!["B", "a/1", "a/10", "a/2", "ab", "b", "site/title", "tmp"]
    );
    // Delete, conditional delete.
    assert!(matches!(
        e.storage.kv_delete(&ctx(&p), "conf", "b", Some(9)).await,
        Err(StorageError::PreconditionFailed(_))
    ));
    e.storage
        .kv_delete(&ctx(&p), "conf", "b", Some(1))
        .await
        .unwrap();
    assert!(matches!(
        e.storage.kv_delete(&ctx(&p), "conf", "b", None).await,
        Err(StorageError::NotFound(_))
    ));
    // A static bucket is not a KV bucket; read scope cannot write.
    e.storage
        .create_bucket(&ctx(&p), bucket("site", "static"))
        .await
        .unwrap();
    assert!(matches!(
        e.storage.kv_get(&ctx(&p), "site", "x").await,
        Err(StorageError::Conflict(_))
    ));
    assert!(matches!(
        e.storage
            .kv_put(
                &ctx(&op("o1", &["kv:read"])),
                write("conf", "x", "1", KvCondition::None, 0)
            )
            .await,
        Err(StorageError::MissingScope(_))
    ));
    // Another org does not see the bucket.
    assert!(matches!(
        e.storage
            .kv_get(&ctx(&op("o2", &["*"])), "conf", "a/1")
            .await,
        Err(StorageError::NotFound(_))
    ));
}

async fn concurrent_writers_with_the_same_if_match_exactly_one_wins(backend: Backend) {
    let e = env(backend).await;
    let p = op("o1", &["*"]);
    e.storage
        .create_bucket(&ctx(&p), bucket("conf", "kv"))
        .await
        .unwrap();
    e.storage
        .kv_put(
            &ctx(&p),
            write("conf", "counter", "0", KvCondition::None, 0),
        )
        .await
        .unwrap();
    let writers = (0..8).map(|i| {
        let storage = e.storage.clone();
        let p = p.clone();
        tokio::spawn(async move {
            storage
                .kv_put(
                    &ctx(&p),
                    write(
                        "conf",
                        "counter",
                        &i.to_string(),
                        KvCondition::Version(1),
                        0,
                    ),
                )
                .await
        })
    });
    let results = futures::future::join_all(writers).await;
    let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StorageError::PreconditionFailed(_)))))
        .count();
    assert_eq!((wins, lost), (1, 7), "{backend:?}");
    assert_eq!(
        e.storage
            .kv_get(&ctx(&p), "conf", "counter")
            .await
            .unwrap()
            .version,
        2
    );
    // Create-only races too: one creator.
    let creators = (0..8).map(|i| {
        let storage = e.storage.clone();
        let p = p.clone();
        tokio::spawn(async move {
            storage
                .kv_put(
                    &ctx(&p),
                    write("conf", "fresh", &i.to_string(), KvCondition::Absent, 0),
                )
                .await
        })
    });
    let results = futures::future::join_all(creators).await;
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count(),
        1,
        "{backend:?}"
    );
}

async fn deployments_activate_atomically_and_roll_back(backend: Backend) {
    let e = env(backend).await;
    let p = op("o1", &["*"]);
    let g = gateway();
    e.storage
        .create_bucket(&ctx(&p), bucket("site", "static"))
        .await
        .unwrap();
    e.storage
        .create_binding(&ctx(&p), binding("Assets.Example.com", "site"))
        .await
        .unwrap();
    let (d1, active) = e
        .storage
        .upload_deployment(
            &ctx(&p),
            "site",
            vec![
                file("index.html", "v1"),
                file("docs/index.html", "docs"),
                file("404.html", "nf"),
            ],
            true,
        )
        .await
        .unwrap();
    assert!(active);
    let host = e
        .storage
        .resolve_host(&g, "assets.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(host.active_deployment_id.as_deref(), Some(d1.id.as_str()));
    let r = |path: &'static str, dep: String| {
        let storage = e.storage.clone();
        let g = g.clone();
        async move { storage.resolve_static_path(&g, &dep, path).await.unwrap() }
    };
    assert!(
        matches!(r("", d1.id.clone()).await, Resolution::Found(f) if f.path == "index.html" && f.content_type.starts_with("text/html"))
    );
    assert!(matches!(r("docs", d1.id.clone()).await, Resolution::Redirect(to) if to == "/docs/"));
    assert!(
        matches!(r("docs/", d1.id.clone()).await, Resolution::Found(f) if f.path == "docs/index.html")
    );
    assert!(
        matches!(r("missing.css", d1.id.clone()).await, Resolution::NotFoundPage(f) if f.path == "404.html")
    );

    // A second deployment, not activated: the host still serves the first.
    let (d2, active) = e
        .storage
        .upload_deployment(&ctx(&p), "site", vec![file("index.html", "v2")], false)
        .await
        .unwrap();
    assert!(!active);
    let host = e
        .storage
        .resolve_host(&g, "assets.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(host.active_deployment_id.as_deref(), Some(d1.id.as_str()));
    // Activate it (publish), then roll back.
    e.storage.activate(&ctx(&p), "site", &d2.id).await.unwrap();
    let host = e
        .storage
        .resolve_host(&g, "assets.example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(host.active_deployment_id.as_deref(), Some(d2.id.as_str()));
    assert!(matches!(
        r("missing.css", d2.id.clone()).await,
        Resolution::NotFound
    ));
    e.storage.activate(&ctx(&p), "site", &d1.id).await.unwrap();
    let (deployments, active_id) = e.storage.list_deployments(&p, "site").await.unwrap();
    assert_eq!(deployments.len(), 2);
    assert_eq!(deployments[0].id, d2.id, "newest first");
    assert_eq!(active_id.as_deref(), Some(d1.id.as_str()));
    // Another bucket's deployment cannot be activated here.
    e.storage
        .create_bucket(&ctx(&p), bucket("other", "static"))
        .await
        .unwrap();
    let (foreign, _) = e
        .storage
        .upload_deployment(&ctx(&p), "other", vec![file("a.txt", "x")], true)
        .await
        .unwrap();
    assert!(matches!(
        e.storage.activate(&ctx(&p), "site", &foreign.id).await,
        Err(StorageError::NotFound(_))
    ));

    // Single-object edits derive a new active deployment; blobs are shared.
    let (d3, _) = e
        .storage
        .put_object(&ctx(&p), "site", file("css/app.css", "body{}"))
        .await
        .unwrap();
    assert_eq!(d3.file_count, 4);
    let (_, objects) = e.storage.list_objects(&p, "site", "").await.unwrap();
    assert_eq!(
        objects.iter().map(|o| o.path.as_str()).collect::<Vec<_>>(),
        vec!["404.html", "css/app.css", "docs/index.html", "index.html"]
    );
    let (d4, _) = e
        .storage
        .delete_object(&ctx(&p), "site", "docs/index.html")
        .await
        .unwrap();
    assert_eq!(d4.file_count, 3);
    assert!(matches!(
        e.storage.delete_object(&ctx(&p), "site", "nope.txt").await,
        Err(StorageError::NotFound(_))
    ));
    // Blob bytes come back by hash.
    let Resolution::Found(f) = r("css/app.css", d4.id.clone()).await else {
        panic!("css not found")
    };
    assert_eq!(
        &e.storage.get_blob(&g, &f.sha256).await.unwrap()[..],
        b"body{}"
    );

    // Paths that escape or are malformed are refused; so is an empty deployment.
    for bad in ["../etc/passwd", "a//b", "dir/", "a\\b"] {
        let err = e
            .storage
            .upload_deployment(&ctx(&p), "site", vec![file(bad, "x")], true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Invalid { field: "path", .. }),
            "{bad}: {err:?}"
        );
    }
    assert!(
        e.storage
            .upload_deployment(&ctx(&p), "site", vec![], true)
            .await
            .is_err()
    );
    assert!(matches!(
        e.storage
            .upload_deployment(&ctx(&p), "site", vec![file("a", "1"), file("a", "2")], true)
            .await,
        Err(StorageError::Invalid { .. })
    ));
    // static:read cannot publish; the serving calls refuse operators.
    assert!(matches!(
        e.storage
            .upload_deployment(
                &ctx(&op("o1", &["static:read"])),
                "site",
                vec![file("a", "1")],
                true
            )
            .await,
        Err(StorageError::MissingScope(_))
    ));
    assert!(matches!(
        e.storage.resolve_host(&p, "assets.example.com").await,
        Err(StorageError::Forbidden(_))
    ));
}

async fn bindings_are_unique_across_orgs_and_tokens_are_checked(backend: Backend) {
    let e = env(backend).await;
    let a = op("o1", &["*"]);
    let b = op("o2", &["*"]);
    let g = gateway();
    e.storage
        .create_bucket(&ctx(&a), bucket("conf", "kv"))
        .await
        .unwrap();
    e.storage
        .create_bucket(&ctx(&b), bucket("conf", "kv"))
        .await
        .unwrap();
    e.storage
        .create_binding(&ctx(&a), binding("kv.example.com", "conf"))
        .await
        .unwrap();
    assert!(matches!(
        e.storage
            .create_binding(&ctx(&b), binding("KV.example.com", "conf"))
            .await,
        Err(StorageError::AlreadyExists(_))
    ));
    assert!(matches!(
        try_binding("not a host", "conf"),
        Err(StorageError::Invalid { field: "host", .. })
    ));
    // o2 cannot see or touch o1's binding.
    assert!(e.storage.list_bindings(&b).await.unwrap().is_empty());
    assert!(matches!(
        e.storage.delete_binding(&ctx(&b), "kv.example.com").await,
        Err(StorageError::NotFound(_))
    ));
    // Disabled bindings do not resolve.
    e.storage
        .set_binding_enabled(&ctx(&a), "kv.example.com", false)
        .await
        .unwrap();
    assert!(
        e.storage
            .resolve_host(&g, "kv.example.com")
            .await
            .unwrap()
            .is_none()
    );
    e.storage
        .set_binding_enabled(&ctx(&a), "kv.example.com", true)
        .await
        .unwrap();
    assert!(
        e.storage
            .resolve_host(&g, "kv.example.com")
            .await
            .unwrap()
            .is_some()
    );

    // Tokens: named buckets must exist and be of the surface; admin of the surface needed.
    assert!(matches!(
        e.storage
            .create_token(&ctx(&a), token("kv", "read", &["nope".into()], "", 0))
            .await,
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        try_token("kv", "root", &["conf".into()], "", 0),
        Err(StorageError::Invalid {
            field: "access",
            ..
        })
    ));
    assert!(matches!(
        try_token("kv", "read", &["*".into(), "conf".into()], "", 0),
        Err(StorageError::Invalid { .. })
    ));
    assert!(matches!(
        e.storage
            .create_token(
                &ctx(&op("o1", &["kv:write"])),
                token("kv", "read", &["conf".into()], "", 0)
            )
            .await,
        Err(StorageError::MissingScope(_))
    ));
    let (t, secret) = e
        .storage
        .create_token(&ctx(&a), token("kv", "read", &["conf".into()], "ci", 0))
        .await
        .unwrap();
    assert!(secret.starts_with("lst_"));
    let grant = e.storage.authorize_token(&g, &secret).await.unwrap();
    assert_eq!(
        (
            grant.org_id.as_str(),
            grant.access().name(),
            grant.buckets.clone()
        ),
        ("o1", "read", vec!["conf".to_owned()])
    );
    assert!(e.storage.authorize_token(&g, "lst_forged").await.is_err());
    assert_eq!(e.storage.list_tokens(&a).await.unwrap().len(), 1);
    assert!(e.storage.list_tokens(&b).await.unwrap().is_empty());
    assert!(matches!(
        e.storage.revoke_token(&ctx(&b), &t.id).await,
        Err(StorageError::NotFound(_))
    ));
    e.storage.revoke_token(&ctx(&a), &t.id).await.unwrap();
    assert!(e.storage.authorize_token(&g, &secret).await.is_err());
    // Only the hash of the secret is stored.
    assert!(
        e.storage
            .store()
            .token_by_hash(&secret)
            .await
            .unwrap()
            .is_none()
    );
}

/// The storage service decides host KV access itself: a request a correct gateway
/// would never send (a read token writing, a token naming another org's host, a
/// forged or revoked token, an operator posing as the gateway) is refused here.
async fn forged_host_kv_requests_are_refused_by_the_storage_service(backend: Backend) {
    use lattice_storage::input::HostKvWrite;
    let e = env(backend).await;
    let (a, b) = (op("o1", &["*"]), op("o2", &["*"]));
    let g = ctx(&gateway());
    for (p, name, host) in [(&a, "conf", "kv.o1.test"), (&b, "secrets", "kv.o2.test")] {
        e.storage
            .create_bucket(&ctx(p), bucket(name, "kv"))
            .await
            .unwrap();
        e.storage
            .create_binding(&ctx(p), binding(host, name))
            .await
            .unwrap();
        e.storage
            .kv_put(&ctx(p), write(name, "k", "\"v\"", KvCondition::None, 0))
            .await
            .unwrap();
    }
    let (_, read) = e
        .storage
        .create_token(&ctx(&a), token("kv", "read", &["conf".into()], "", 0))
        .await
        .unwrap();
    let (written, write) = e
        .storage
        .create_token(&ctx(&a), token("kv", "write", &["*".into()], "", 0))
        .await
        .unwrap();
    let (read, write) = (read.as_str(), write.as_str());
    let put = |host: &str, secret: &str| HostKvWrite {
        host: host.into(),
        secret: secret.into(),
        entry: KvEntry::parse("k", "\"forged\"", KvCondition::None, 0).expect("a valid entry"),
    };
    // What a correct gateway sends works.
    let row = e
        .storage
        .host_kv_get(&g, "kv.o1.test", read, "k")
        .await
        .unwrap();
    assert_eq!(row.value, "\"v\"");
    // A read-only token cannot write, whatever the gateway concluded.
    assert!(
        matches!(
            e.storage.host_kv_put(&g, put("kv.o1.test", read)).await,
            Err(StorageError::Forbidden(ref m)) if m.contains("read access")
        ),
        "{backend:?}"
    );
    // A token of org o1 reaches nothing of org o2, even with `*` buckets.
    assert!(matches!(
        e.storage.host_kv_get(&g, "kv.o2.test", write, "k").await,
        Err(StorageError::Forbidden(_))
    ));
    assert!(matches!(
        e.storage.host_kv_put(&g, put("kv.o2.test", write)).await,
        Err(StorageError::Forbidden(_))
    ));
    assert!(matches!(
        e.storage
            .host_kv_delete(&g, "kv.o2.test", write, "k", None)
            .await,
        Err(StorageError::Forbidden(_))
    ));
    // A made-up or revoked token is nobody (revocation evicts the cached grant).
    assert!(matches!(
        e.storage
            .host_kv_get(&g, "kv.o1.test", "lst_made-up", "k")
            .await,
        Err(StorageError::Unauthenticated(_))
    ));
    e.storage
        .host_kv_put(&g, put("kv.o1.test", write))
        .await
        .unwrap();
    e.storage.revoke_token(&ctx(&a), &written.id).await.unwrap();
    assert!(matches!(
        e.storage.host_kv_put(&g, put("kv.o1.test", write)).await,
        Err(StorageError::Unauthenticated(_))
    ));
    // Only the gateway's service principal may call the serving API.
    assert!(matches!(
        e.storage
            .host_kv_get(&ctx(&a), "kv.o1.test", read, "k")
            .await,
        Err(StorageError::Forbidden(_))
    ));
    // Org o2's value is untouched.
    let row = e.storage.kv_get(&ctx(&b), "secrets", "k").await.unwrap();
    assert_eq!(row.value, "\"v\"", "{backend:?}");
}

async fn concurrent_single_object_edits_never_lose_each_other(backend: Backend) {
    let e = env(backend).await;
    let p = op("o1", &["*"]);
    e.storage
        .create_bucket(&ctx(&p), bucket("site", "static"))
        .await
        .unwrap();
    e.storage
        .upload_deployment(&ctx(&p), "site", vec![file("index.html", "x")], true)
        .await
        .unwrap();
    let edits = (0..6).map(|i| {
        let storage = e.storage.clone();
        let p = p.clone();
        tokio::spawn(async move {
            storage
                .put_object(&ctx(&p), "site", file(&format!("f{i}.txt"), "y"))
                .await
        })
    });
    let results = futures::future::join_all(edits).await;
    let won: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Ok(Ok(_))))
        .map(|(i, _)| i)
        .collect();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(Ok(_)) | Ok(Err(StorageError::Conflict(_))))),
        "{backend:?}"
    );
    assert!(!won.is_empty());
    // Every edit that was acknowledged is in the active site.
    let (_, objects) = e.storage.list_objects(&p, "site", "").await.unwrap();
    let paths: Vec<String> = objects.into_iter().map(|o| o.path).collect();
    for i in won {
        assert!(
            paths.contains(&format!("f{i}.txt")),
            "{backend:?}: f{i}.txt was acknowledged but lost: {paths:?}"
        );
    }
}

/// A media type is sent back as a header byte for byte: one that could not be is
/// refused at upload, naming the field and the file.
async fn uploads_with_a_content_type_that_is_no_header_are_refused(backend: Backend) {
    let e = env(backend).await;
    let p = op("o1", &["*"]);
    e.storage
        .create_bucket(&ctx(&p), bucket("site", "static"))
        .await
        .unwrap();
    let mut bad = file("index.html", "x");
    bad.content_type = "text/html\r\nset-cookie: a=b".into();
    match e
        .storage
        .upload_deployment(&ctx(&p), "site", vec![bad], true)
        .await
    {
        Err(StorageError::Invalid {
            field: "content_type",
            reason,
        }) => assert!(reason.contains("index.html"), "{reason}"),
        other => panic!("{backend:?}: {other:?}"),
    }
    let mut good = file("index.html", "x");
    good.content_type = "text/html; charset=utf-8".into();
    e.storage
        .upload_deployment(&ctx(&p), "site", vec![good], true)
        .await
        .unwrap();
}

/// A static storage token relayed by the gateway acts as what the storage service
/// reads from the token itself: its org, `static:<access>`, and only the buckets it
/// covers; it is refused when revoked, for the kv surface, or when anyone but a
/// service relays it.
async fn relayed_site_tokens_act_as_the_token_says(backend: Backend) {
    let e = env(backend).await;
    let a = op("o1", &["*"]);
    for name in ["site", "other"] {
        e.storage
            .create_bucket(&ctx(&a), bucket(name, "static"))
            .await
            .unwrap();
    }
    let (t, secret) = e
        .storage
        .create_token(
            &ctx(&a),
            token("static", "write", &["site".into()], "ci", 0),
        )
        .await
        .unwrap();
    let (_, kv_secret) = e
        .storage
        .create_token(&ctx(&a), token("kv", "admin", &["*".into()], "kv", 0))
        .await
        .unwrap();
    let g = gateway();
    let p = e
        .storage
        .site_token_principal(&g, &secret, "site")
        .await
        .unwrap();
    assert_eq!(
        (p.org_id.as_str(), p.scopes.clone(), p.sub.clone()),
        (
            "o1",
            vec!["static:write".to_owned()],
            format!("storage_token:{}", t.id)
        ),
        "{backend:?}"
    );
    // Another bucket, the kv surface, a made-up token, an operator as the carrier.
    for (carrier, secret, bucket) in [
        (&g, secret.as_str(), "other"),
        (&g, kv_secret.as_str(), "site"),
        (&g, "lst_made-up", "site"),
        (&a, secret.as_str(), "site"),
    ] {
        assert!(
            e.storage
                .site_token_principal(carrier, secret, bucket)
                .await
                .is_err(),
            "{backend:?}: {bucket}"
        );
    }
    e.storage.revoke_token(&ctx(&a), &t.id).await.unwrap();
    assert!(matches!(
        e.storage.site_token_principal(&g, &secret, "site").await,
        Err(StorageError::Unauthenticated(_))
    ));
}

/// A secret bucket: values sealed at rest (bound to their bucket and key), read
/// only when the policy allows that reader that path (an operator through the
/// API, a storage token through a host binding), withheld from listings; only kv
/// buckets hold secrets.
async fn secret_buckets_seal_values_and_ask_the_policy_on_every_read(backend: Backend) {
    let e = env(backend).await;
    let admin = op("o1", &["*"]);
    let g = ctx(&gateway());
    assert!(matches!(
        NewBucket::try_from(pb::CreateBucketRequest {
            name: "site".into(),
            surface: "static".into(),
            secret: true,
        }),
        Err(StorageError::Invalid {
            field: "secret",
            ..
        })
    ));
    let vault = NewBucket::try_from(pb::CreateBucketRequest {
        name: "vault".into(),
        surface: "kv".into(),
        secret: true,
    })
    .unwrap();
    let row = e.storage.create_bucket(&ctx(&admin), vault).await.unwrap();
    assert!(row.secret);
    e.storage
        .create_binding(&ctx(&admin), binding("vault.o1.test", "vault"))
        .await
        .unwrap();
    let written = e
        .storage
        .kv_put(
            &ctx(&admin),
            write(
                "vault",
                "db",
                "{\"password\":\"hunter2\"}",
                KvCondition::None,
                0,
            ),
        )
        .await
        .unwrap();
    assert_eq!(written.value, "{\"password\":\"hunter2\"}");
    // At rest: sealed, nothing of the value in the clear.
    let (stored,): (String,) = sqlx::query_as("SELECT value FROM storage_kv WHERE key = 'db'")
        .fetch_one(e.db.pool())
        .await
        .unwrap();
    assert!(stored.starts_with("sealed:"), "{stored}");
    assert!(!stored.contains("hunter2"));
    // Default deny, for the operator and for a storage token alike.
    let (_, secret) = e
        .storage
        .create_token(
            &ctx(&admin),
            token("kv", "read", &["vault".into()], "app", 0),
        )
        .await
        .unwrap();
    assert!(matches!(
        e.storage.kv_get(&ctx(&admin), "vault", "db").await,
        Err(StorageError::Forbidden(_))
    ));
    assert!(matches!(
        e.storage
            .host_kv_get(&g, "vault.o1.test", &secret, "db")
            .await,
        Err(StorageError::Forbidden(_))
    ));
    // A refusal comes before the lookup: it does not tell whether a key exists.
    assert!(matches!(
        e.storage.kv_get(&ctx(&admin), "vault", "nope").await,
        Err(StorageError::Forbidden(_))
    ));
    // Allowed per reader and path.
    e.readers
        .lock()
        .unwrap()
        .insert("token:app:vault/db".into());
    let row = e
        .storage
        .host_kv_get(&g, "vault.o1.test", &secret, "db")
        .await
        .unwrap();
    assert_eq!(row.value, "{\"password\":\"hunter2\"}");
    assert!(matches!(
        e.storage.kv_get(&ctx(&admin), "vault", "db").await,
        Err(StorageError::Forbidden(_))
    ));
    e.readers
        .lock()
        .unwrap()
        .insert("user:user-o1:vault/db".into());
    let row = e.storage.kv_get(&ctx(&admin), "vault", "db").await.unwrap();
    assert_eq!(row.value, "{\"password\":\"hunter2\"}");
    // Conditional writes work on sealed values; listings withhold them.
    e.storage
        .kv_put(
            &ctx(&admin),
            write(
                "vault",
                "db",
                "{\"password\":\"s3cret\"}",
                KvCondition::Version(row.version),
                0,
            ),
        )
        .await
        .unwrap();
    let page = e
        .storage
        .kv_list(&admin, "vault", "", "", 10)
        .await
        .unwrap();
    assert!(page.withheld);
    assert_eq!(page.rows.len(), 1);
    assert_eq!(page.rows[0].value, "");
    assert_eq!(page.rows[0].version, row.version + 1);
    let row = e.storage.kv_get(&ctx(&admin), "vault", "db").await.unwrap();
    assert_eq!(row.value, "{\"password\":\"s3cret\"}", "{backend:?}");
}

lattice_core::store_test_suite!(
    secret_buckets_seal_values_and_ask_the_policy_on_every_read,
    buckets_are_validated_unique_per_org_and_scoped,
    kv_conditional_writes_ttl_and_ordered_listing,
    concurrent_writers_with_the_same_if_match_exactly_one_wins,
    deployments_activate_atomically_and_roll_back,
    bindings_are_unique_across_orgs_and_tokens_are_checked,
    forged_host_kv_requests_are_refused_by_the_storage_service,
    concurrent_single_object_edits_never_lose_each_other,
    uploads_with_a_content_type_that_is_no_header_are_refused,
    relayed_site_tokens_act_as_the_token_says,
);
