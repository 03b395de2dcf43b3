//! `#[authorize(..)]` (DESIGN §5, layer 4): no principal is `Unauthenticated`; a missing
//! permission or role, or a resource policy's refusal, is `Forbidden` and says what is missing;
//! `admin_override` lets admins through; a resource policy must be configured. It runs before
//! the cache, so a refused caller neither reads nor fills it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use cqrs_core::{BuildProblem, ResourcePolicy, ResourceRequest};

#[derive(Default)]
struct Runs(AtomicUsize);

impl Runs {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct DeleteUser {
    user_id: u32,
}

#[command_handler(DeleteUser)]
#[authorize(permissions = ["user:delete", "user:read"])]
struct DeleteUserHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<DeleteUser> for DeleteUserHandler {
    async fn handle(&self, cmd: DeleteUser, cx: &mut CommandContext) -> Result<String, Error> {
        self.runs.bump();
        let by = cx
            .principal()
            .map(|p| p.id().to_owned())
            .unwrap_or_default();
        Ok(format!("user {} deleted by {by}", cmd.user_id))
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct PromoteUser {
    user_id: u32,
}

#[command_handler(PromoteUser)]
#[authorize(roles = ["admin", "support"])]
struct PromoteUserHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<PromoteUser> for PromoteUserHandler {
    async fn handle(&self, cmd: PromoteUser, _cx: &mut CommandContext) -> Result<u32, Error> {
        self.runs.bump();
        Ok(cmd.user_id)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u32)]
struct PurgeCache {
    region: u32,
}

#[command_handler(PurgeCache)]
#[authorize(permissions = ["cache:purge"], admin_override)]
struct PurgeCacheHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<PurgeCache> for PurgeCacheHandler {
    async fn handle(&self, cmd: PurgeCache, _cx: &mut CommandContext) -> Result<u32, Error> {
        self.runs.bump();
        Ok(cmd.region)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct EditOrder {
    order_id: String,
    note: String,
}

#[command_handler(EditOrder)]
#[authorize(permissions = ["order:edit"], resource = order_id, admin_override)]
struct EditOrderHandler {
    runs: Arc<Runs>,
}

impl CommandHandler<EditOrder> for EditOrderHandler {
    async fn handle(&self, cmd: EditOrder, _cx: &mut CommandContext) -> Result<String, Error> {
        self.runs.bump();
        Ok(format!("{}: {}", cmd.order_id, cmd.note))
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct ShowOrder {
    order_id: u64,
}

#[query_handler(ShowOrder)]
#[authorize(resource = order_id)]
struct ShowOrderHandler {
    runs: Arc<Runs>,
}

impl QueryHandler<ShowOrder> for ShowOrderHandler {
    async fn handle(&self, q: ShowOrder, _cx: &QueryContext) -> Result<String, Error> {
        self.runs.bump();
        Ok(format!("order {}", q.order_id))
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct Salary {
    employee: u32,
}

/// Authorized and cached.
#[query_handler(Salary)]
#[authorize(permissions = ["salary:read"])]
#[cached_query(ttl = "5m")]
struct SalaryHandler {
    runs: Arc<Runs>,
}

impl QueryHandler<Salary> for SalaryHandler {
    async fn handle(&self, q: Salary, _cx: &QueryContext) -> Result<String, Error> {
        let n = self.runs.bump();
        Ok(format!(
            "employee {} earns 100 (computed {n} times)",
            q.employee
        ))
    }
}

/// The owner of an order is the principal whose id prefixes it: `alice-1` is alice's.
#[derive(Clone, Default)]
struct OwnOrders {
    asked: Arc<Mutex<Vec<Asked>>>,
}

/// What the policy was asked: principal, message, field, resource id.
type Asked = (String, &'static str, &'static str, String);

impl ResourcePolicy for OwnOrders {
    async fn allows(&self, r: &ResourceRequest<'_>) -> Result<bool, Error> {
        self.asked.lock().unwrap().push((
            r.principal.id().to_owned(),
            r.message_name,
            r.field,
            r.resource_id.to_owned(),
        ));
        if let Some(edit) = r.message::<EditOrder>() {
            assert_eq!(edit.order_id, r.resource_id);
        }
        if r.resource_id == "policy-down" {
            return Err(Error::unavailable("the ownership service is down"));
        }
        if r.message_name == "ShowOrder" {
            // Numeric ids: even ones are public.
            return Ok(r.resource_id.parse::<u64>().is_ok_and(|n| n % 2 == 0));
        }
        Ok(r.resource_id.starts_with(&format!("{}-", r.principal.id())))
    }
}

struct World {
    bus: Bus,
    runs: Arc<Runs>,
    policy: OwnOrders,
}

fn world() -> World {
    let runs = Arc::new(Runs::default());
    let policy = OwnOrders::default();
    let bus = Bus::builder()
        .discover(false)
        .register::<DeleteUserHandler>()
        .register::<PromoteUserHandler>()
        .register::<PurgeCacheHandler>()
        .register::<EditOrderHandler>()
        .register::<ShowOrderHandler>()
        .register::<SalaryHandler>()
        .provide(runs.clone())
        .resource_policy(policy.clone())
        .build()
        .unwrap();
    World { bus, runs, policy }
}

fn as_user(id: &str) -> Principal {
    Principal::new(id)
}

#[tokio::test]
async fn without_a_principal_the_caller_is_unauthenticated_and_the_handler_does_not_run() {
    let w = world();
    let err = w.bus.send(DeleteUser { user_id: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unauthenticated);
    assert!(err.message().contains("`DeleteUser`"), "{err}");
    let err = w.bus.send(PromoteUser { user_id: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unauthenticated);
    let err = w.bus.query(Salary { employee: 1 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unauthenticated);
    assert_eq!(w.runs.get(), 0);
}

#[tokio::test]
async fn every_listed_permission_is_required_and_the_missing_ones_are_named() {
    let w = world();
    let reader = as_user("rita").with_permissions(["user:read"]);
    let err = w
        .bus
        .send(Envelope::new(DeleteUser { user_id: 1 }).principal(reader))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert_eq!(
        err.message(),
        "`DeleteUser` requires permission `user:delete`, which principal `rita` lacks"
    );

    let nobody = as_user("nora").with_permissions(["order:edit"]);
    let err = w
        .bus
        .send(Envelope::new(DeleteUser { user_id: 1 }).principal(nobody))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert!(err.message().contains("permission `user:delete`"), "{err}");
    assert!(err.message().contains("permission `user:read`"), "{err}");
    assert_eq!(w.runs.get(), 0);

    let both = as_user("bob").with_permissions(["user:read", "user:delete"]);
    let out = w
        .bus
        .send(Envelope::new(DeleteUser { user_id: 1 }).principal(both))
        .await
        .unwrap();
    assert_eq!(out, "user 1 deleted by bob");
    assert_eq!(w.runs.get(), 1);
}

#[tokio::test]
async fn one_of_the_listed_roles_is_enough() {
    let w = world();
    for role in ["admin", "support"] {
        let p = as_user("sam").with_roles([role, "reader"]);
        let out = w
            .bus
            .send(Envelope::new(PromoteUser { user_id: 4 }).principal(p))
            .await
            .unwrap();
        assert_eq!(out, 4, "{role}");
    }
    let p = as_user("ren")
        .with_roles(["reader"])
        .with_permissions(["admin"]);
    let err = w
        .bus
        .send(Envelope::new(PromoteUser { user_id: 4 }).principal(p))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert_eq!(
        err.message(),
        "`PromoteUser` requires one of the roles `admin`, `support`, which principal `ren` lacks"
    );
    assert_eq!(w.runs.get(), 2);
}

#[tokio::test]
async fn the_admin_flag_counts_only_where_admin_override_is_declared() {
    let w = world();
    let admin = Principal::admin("root");

    let err = w
        .bus
        .send(Envelope::new(DeleteUser { user_id: 1 }).principal(admin.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        Status::Forbidden,
        "no admin_override on DeleteUser"
    );

    let out = w
        .bus
        .send(Envelope::new(PurgeCache { region: 3 }).principal(admin))
        .await
        .unwrap();
    assert_eq!(out, 3);

    let err = w
        .bus
        .send(Envelope::new(PurgeCache { region: 3 }).principal(as_user("joe")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert!(err.message().contains("permission `cache:purge`"), "{err}");

    let out = w
        .bus
        .send(
            Envelope::new(PurgeCache { region: 5 })
                .principal(as_user("joe").with_permissions(["cache:purge"])),
        )
        .await
        .unwrap();
    assert_eq!(out, 5);
    assert_eq!(w.runs.get(), 2);
}

fn edit(order_id: &str) -> EditOrder {
    EditOrder {
        order_id: order_id.to_owned(),
        note: "leave at the door".to_owned(),
    }
}

#[tokio::test]
async fn the_resource_policy_decides_on_the_named_field() {
    let w = world();
    let alice = as_user("alice").with_permissions(["order:edit"]);

    let out = w
        .bus
        .send(Envelope::new(edit("alice-1")).principal(alice.clone()))
        .await
        .unwrap();
    assert_eq!(out, "alice-1: leave at the door");

    let err = w
        .bus
        .send(Envelope::new(edit("bob-1")).principal(alice))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert!(err.message().contains("`alice`"), "{err}");
    assert!(err.message().contains("order_id `bob-1`"), "{err}");
    assert!(err.message().contains("`EditOrder`"), "{err}");
    assert_eq!(w.runs.get(), 1);

    let asked = w.policy.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [
            (
                "alice".to_owned(),
                "EditOrder",
                "order_id",
                "alice-1".to_owned()
            ),
            (
                "alice".to_owned(),
                "EditOrder",
                "order_id",
                "bob-1".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn a_resource_policy_on_a_query_reads_a_non_string_field_through_display() {
    let w = world();
    let out = w
        .bus
        .query(Envelope::new(ShowOrder { order_id: 42 }).principal(as_user("eve")))
        .await
        .unwrap();
    assert_eq!(out, "order 42");
    let err = w
        .bus
        .query(Envelope::new(ShowOrder { order_id: 43 }).principal(as_user("eve")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    let asked: Vec<String> = w
        .policy
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.3.clone())
        .collect();
    assert_eq!(asked, ["42", "43"]);
}

#[tokio::test]
async fn the_policy_is_not_asked_when_permissions_already_refuse() {
    let w = world();
    let err = w
        .bus
        .send(Envelope::new(edit("mallory-1")).principal(as_user("mallory")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert!(err.message().contains("permission `order:edit`"), "{err}");
    assert!(w.policy.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_policy_fails_the_dispatch_with_its_own_status() {
    let w = world();
    let p = as_user("alice").with_permissions(["order:edit"]);
    let err = w
        .bus
        .send(Envelope::new(edit("policy-down")).principal(p))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Unavailable);
    assert_eq!(err.message(), "the ownership service is down");
    assert_eq!(w.runs.get(), 0);
}

#[tokio::test]
async fn admin_override_skips_the_resource_policy_too() {
    let w = world();
    let out = w
        .bus
        .send(Envelope::new(edit("bob-9")).principal(Principal::admin("ops")))
        .await
        .unwrap();
    assert_eq!(out, "bob-9: leave at the door");
    assert!(w.policy.asked.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_resource_check_without_a_policy_fails_the_build() {
    let err = Bus::builder()
        .discover(false)
        .register::<EditOrderHandler>()
        .register::<ShowOrderHandler>()
        .register::<DeleteUserHandler>()
        .provide(Arc::new(Runs::default()))
        .build()
        .unwrap_err();
    let mut found: Vec<(&str, &str)> = err
        .problems()
        .iter()
        .map(|p| match p {
            BuildProblem::MissingBackend {
                handler,
                decorator,
                needs,
                location,
            } => {
                assert!(location.file.ends_with("authorize.rs"), "{location}");
                assert!(needs.contains(".resource_policy("), "{needs}");
                (*handler, *decorator)
            }
            other => panic!("unexpected problem: {other}"),
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("EditOrderHandler", "#[authorize(resource = ..)]"),
            ("ShowOrderHandler", "#[authorize(resource = ..)]"),
        ]
    );
}

#[tokio::test]
async fn a_refused_caller_never_reads_a_cached_answer() {
    let w = world();
    let hr = as_user("hr").with_permissions(["salary:read"]);
    let first = w
        .bus
        .query_with_report(Envelope::new(Salary { employee: 7 }).principal(hr.clone()))
        .await
        .unwrap();
    assert_eq!(first.output, "employee 7 earns 100 (computed 1 times)");
    assert!(!first.cache_hit);

    let err = w
        .bus
        .query(Envelope::new(Salary { employee: 7 }).principal(as_user("intern")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    let err = w.bus.query(Salary { employee: 7 }).await.unwrap_err();
    assert_eq!(err.status(), Status::Unauthenticated);

    let again = w
        .bus
        .query_with_report(Envelope::new(Salary { employee: 7 }).principal(hr))
        .await
        .unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.output, first.output);
    assert_eq!(w.runs.get(), 1);
}

#[tokio::test]
async fn a_refused_caller_never_fills_the_cache() {
    let w = world();
    for _ in 0..3 {
        let err = w
            .bus
            .query(Envelope::new(Salary { employee: 9 }).principal(as_user("intern")))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Status::Forbidden);
    }
    assert_eq!(
        w.runs.get(),
        0,
        "the handler never ran for a refused caller"
    );

    let hr = as_user("hr").with_permissions(["salary:read"]);
    let report = w
        .bus
        .query_with_report(Envelope::new(Salary { employee: 9 }).principal(hr))
        .await
        .unwrap();
    assert!(!report.cache_hit, "nothing was cached by the refused calls");
    assert_eq!(report.output, "employee 9 earns 100 (computed 1 times)");
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = String)]
struct OffboardUser {
    user_id: u32,
}

/// Needs no permission itself, but sends `DeleteUser`, which does.
#[command_handler(OffboardUser)]
#[authorize]
struct OffboardUserHandler;

impl CommandHandler<OffboardUser> for OffboardUserHandler {
    async fn handle(&self, cmd: OffboardUser, cx: &mut CommandContext) -> Result<String, Error> {
        cx.send(DeleteUser {
            user_id: cmd.user_id,
        })
        .await
    }
}

#[tokio::test]
async fn a_command_sent_from_a_handler_is_authorized_as_its_parents_principal() {
    let runs = Arc::new(Runs::default());
    let bus = Bus::builder()
        .discover(false)
        .register::<OffboardUserHandler>()
        .register::<DeleteUserHandler>()
        .provide(runs.clone())
        .build()
        .unwrap();

    let err = bus
        .send(Envelope::new(OffboardUser { user_id: 3 }).principal(as_user("temp")))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Status::Forbidden);
    assert!(err.message().contains("`DeleteUser`"), "{err}");
    assert!(err.message().contains("`temp`"), "{err}");

    let hr = as_user("hr").with_permissions(["user:read", "user:delete"]);
    let out = bus
        .send(Envelope::new(OffboardUser { user_id: 3 }).principal(hr))
        .await
        .unwrap();
    assert_eq!(out, "user 3 deleted by hr");
    assert_eq!(runs.get(), 1);
}
