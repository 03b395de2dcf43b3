//! Who is calling: bearer tokens to principals, and who may read which order.
//!
//! The shop knows four demo tokens (send them as `Authorization: Bearer <token>`):
//!
//! | token | principal | roles | permissions |
//! |---|---|---|---|
//! | `staff-token` | `sam` | `staff` | `user:create`, `user:read`, `product:write`, `order:read` |
//! | `alice-token` | `alice` | `customer` | `order:place`, `order:read` |
//! | `bob-token` | `bob` | `customer` | `order:place`, `order:read` |
//! | `admin-token` | `root` | (admin flag) | none: passes only `#[authorize(.., admin_override)]` |
//!
//! A real service verifies a signed token (a JWT from its identity provider, a session looked up
//! in a store) in [`verify`]; nothing else changes: handlers only ever see the [`Principal`].

use cqrs_core::{Error, Principal, ResourcePolicy, ResourceRequest, sqlx};

use super::db::{Db, on_db};

/// The principal a bearer token stands for; `None` for an unknown token (answered `401`).
pub async fn verify(token: String) -> Result<Option<Principal>, Error> {
    let customer = |id: &str| {
        Principal::new(id)
            .with_roles(["customer"])
            .with_permissions(["order:place", "order:read"])
    };
    Ok(match token.as_str() {
        "staff-token" => Some(
            Principal::new("sam")
                .with_roles(["staff"])
                .with_permissions(["user:create", "user:read", "product:write", "order:read"]),
        ),
        "alice-token" => Some(customer("alice")),
        "bob-token" => Some(customer("bob")),
        "admin-token" => Some(Principal::admin("root")),
        _ => None,
    })
}

/// The resource policy of `#[authorize(resource = order_id)]`: staff may read every order, a
/// customer only their own. An order the read side does not know yet is let through (its handler
/// answers `404`).
#[derive(Clone)]
pub struct OrderAccess {
    pub db: Db,
}

impl ResourcePolicy for OrderAccess {
    async fn allows(&self, request: &ResourceRequest<'_>) -> Result<bool, Error> {
        if request.principal.has_role("staff") {
            return Ok(true);
        }
        let owner = on_db!(&self.db, |c| {
            sqlx::query_scalar::<_, String>(
                "SELECT customer FROM order_summaries WHERE order_id = $1",
            )
            .bind(request.resource_id)
            .fetch_optional(c)
            .await
        })?;
        Ok(owner.is_none_or(|owner| owner == request.principal.id()))
    }
}
