//! Layer 4: who may send this message.
//!
//! `#[authorize(permissions = [..], roles = [..], resource = field, admin_override)]`:
//! - no principal in the envelope → `Unauthenticated`;
//! - every listed permission is required, and at least one of the listed roles; whatever is
//!   missing is named in the `Forbidden` error;
//! - `resource = field` passes that field's value (through `Display`) to the application's
//!   [`ResourcePolicy`] ("is this user the owner of this order?"), which may refuse;
//! - `admin_override` lets a principal with the admin flag through without any of the checks.
//!
//! It runs before validation and before the cache, so an unauthorized caller learns nothing
//! about the message's validity and never sees a cached answer.

use std::any::Any;
use std::fmt;
use std::future::Future;

use futures_util::future::BoxFuture;

use crate::Error;
use crate::envelope::{Metadata, Principal};

/// The configuration of `#[authorize(..)]`.
///
/// ```
/// use cqrs_core::AuthorizeLayer;
///
/// let layer = AuthorizeLayer::new()
///     .permissions(&["user:delete"])
///     .roles(&["admin", "support"])
///     .admin_override();
/// assert_eq!(
///     layer.to_string(),
///     "authorize(permissions=[user:delete], roles=[admin, support], admin_override)"
/// );
/// ```
#[derive(Clone, Copy)]
pub struct AuthorizeLayer {
    permissions: &'static [&'static str],
    roles: &'static [&'static str],
    admin_override: bool,
    resource: Option<ResourceField>,
}

/// The message field `#[authorize(resource = field)]` names, and how to read it.
#[derive(Clone, Copy, Debug)]
pub struct ResourceField {
    field: &'static str,
    id: fn(&(dyn Any + Send + Sync)) -> Option<String>,
}

impl ResourceField {
    /// The field `field`, read by `id` from the message (the macro generates `id`).
    pub const fn new(
        field: &'static str,
        id: fn(&(dyn Any + Send + Sync)) -> Option<String>,
    ) -> Self {
        ResourceField { field, id }
    }
}

impl AuthorizeLayer {
    /// Only an authenticated principal is required.
    pub const fn new() -> Self {
        AuthorizeLayer {
            permissions: &[],
            roles: &[],
            admin_override: false,
            resource: None,
        }
    }

    /// Every one of these permissions is required.
    pub const fn permissions(mut self, permissions: &'static [&'static str]) -> Self {
        self.permissions = permissions;
        self
    }

    /// At least one of these roles is required.
    pub const fn roles(mut self, roles: &'static [&'static str]) -> Self {
        self.roles = roles;
        self
    }

    /// A principal with the admin flag skips every check.
    pub const fn admin_override(mut self) -> Self {
        self.admin_override = true;
        self
    }

    /// The application's [`ResourcePolicy`] decides on the value of this field.
    pub const fn resource(mut self, field: ResourceField) -> Self {
        self.resource = Some(field);
        self
    }

    /// Whether a resource policy is needed.
    pub fn needs_policy(&self) -> bool {
        self.resource.is_some()
    }

    /// The checks that need no resource policy: a principal, and its permissions and roles.
    /// Synchronous, and allocation-free when they pass; with no `resource`, this is the whole
    /// check (see [`needs_policy`](Self::needs_policy)).
    pub(crate) fn check_principal<'m>(
        &self,
        message_name: &'static str,
        metadata: &'m Metadata,
    ) -> Result<&'m Principal, Error> {
        let Some(principal) = metadata.principal() else {
            return Err(Error::unauthenticated(format!(
                "`{message_name}` requires an authenticated principal"
            )));
        };
        if self.overrides(principal) {
            return Ok(principal);
        }
        let has_permissions = self.permissions.iter().all(|p| principal.has_permission(p));
        let has_role = self.roles.is_empty() || self.roles.iter().any(|r| principal.has_role(r));
        if has_permissions && has_role {
            return Ok(principal);
        }
        let mut missing: Vec<String> = self
            .permissions
            .iter()
            .filter(|p| !principal.has_permission(p))
            .map(|p| format!("permission `{p}`"))
            .collect();
        if !has_role {
            let roles: Vec<String> = self.roles.iter().map(|r| format!("`{r}`")).collect();
            missing.push(if roles.len() == 1 {
                format!("role {}", roles[0])
            } else {
                format!("one of the roles {}", roles.join(", "))
            });
        }
        Err(Error::forbidden(format!(
            "`{message_name}` requires {}, which principal `{}` lacks",
            missing.join(" and "),
            principal.id()
        )))
    }

    /// Whether `admin_override` lets this principal skip every check.
    fn overrides(&self, principal: &Principal) -> bool {
        self.admin_override && principal.is_admin()
    }

    /// Layer 4 on a lean path, where it may only be a layer that needs no resource policy
    /// (see `is_lean` in `pipeline/command.rs` and `pipeline/query.rs`).
    #[inline]
    pub(crate) fn check_lean(
        layer: Option<&AuthorizeLayer>,
        message_name: &'static str,
        metadata: &Metadata,
    ) -> Result<(), Error> {
        match layer {
            Some(layer) => layer.check_principal(message_name, metadata).map(drop),
            None => Ok(()),
        }
    }

    /// Whether this layer can run on a lean path: without a resource policy, it never awaits.
    #[inline]
    pub(crate) fn is_lean(layer: Option<&AuthorizeLayer>) -> bool {
        layer.is_none_or(|layer| !layer.needs_policy())
    }

    /// Checks the principal in `metadata` against this configuration.
    pub(crate) async fn check(
        &self,
        policy: Option<&dyn DynResourcePolicy>,
        message_name: &'static str,
        message: &(dyn Any + Send + Sync),
        metadata: &Metadata,
    ) -> Result<(), Error> {
        let principal = self.check_principal(message_name, metadata)?;
        if self.overrides(principal) {
            return Ok(());
        }
        if let Some(resource) = &self.resource {
            let Some(resource_id) = (resource.id)(message) else {
                return Err(Error::internal(format!(
                    "could not read field `{}` of `{message_name}` for its resource policy",
                    resource.field
                )));
            };
            let Some(policy) = policy else {
                return Err(Error::internal(format!(
                    "`{message_name}` needs a resource policy and the bus has none"
                )));
            };
            let request = ResourceRequest {
                principal,
                message_name,
                field: resource.field,
                resource_id: &resource_id,
                metadata,
                message,
            };
            if !policy.allows_dyn(&request).await? {
                return Err(Error::forbidden(format!(
                    "the resource policy refused principal `{}` access to {} `{}` for `{message_name}`",
                    principal.id(),
                    resource.field,
                    resource_id
                )));
            }
        }
        Ok(())
    }
}

impl Default for AuthorizeLayer {
    fn default() -> Self {
        AuthorizeLayer::new()
    }
}

impl fmt::Display for AuthorizeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.permissions.is_empty() {
            parts.push(format!(
                "permissions={}",
                super::describe::list(self.permissions)
            ));
        }
        if !self.roles.is_empty() {
            parts.push(format!("roles={}", super::describe::list(self.roles)));
        }
        if let Some(r) = &self.resource {
            parts.push(format!("resource={}", r.field));
        }
        if self.admin_override {
            parts.push("admin_override".to_owned());
        }
        write!(f, "authorize({})", parts.join(", "))
    }
}

impl fmt::Debug for AuthorizeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a [`ResourcePolicy`] is asked.
#[derive(Debug)]
pub struct ResourceRequest<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The message's name.
    pub message_name: &'static str,
    /// The field named by `resource = ..`.
    pub field: &'static str,
    /// That field's value, through `Display`.
    pub resource_id: &'a str,
    /// The message's metadata.
    pub metadata: &'a Metadata,
    message: &'a (dyn Any + Send + Sync),
}

impl ResourceRequest<'_> {
    /// The message itself, if it is an `M`.
    pub fn message<M: 'static>(&self) -> Option<&M> {
        self.message.downcast_ref::<M>()
    }
}

/// The application's answer to "may this principal act on this resource?", for handlers with
/// `#[authorize(resource = field)]`. Give it to the bus with
/// [`BusBuilder::resource_policy`](crate::BusBuilder::resource_policy).
///
/// ```
/// use cqrs_core::{Error, ResourcePolicy, ResourceRequest};
///
/// /// Users may act on their own account only.
/// struct OwnAccount;
///
/// impl ResourcePolicy for OwnAccount {
///     async fn allows(&self, request: &ResourceRequest<'_>) -> Result<bool, Error> {
///         Ok(request.principal.id() == request.resource_id)
///     }
/// }
/// ```
pub trait ResourcePolicy: Send + Sync + 'static {
    /// Whether the principal may send this message about this resource.
    fn allows(
        &self,
        request: &ResourceRequest<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

pub(crate) trait DynResourcePolicy: Send + Sync {
    fn allows_dyn<'a>(
        &'a self,
        request: &'a ResourceRequest<'a>,
    ) -> BoxFuture<'a, Result<bool, Error>>;
}

impl<P: ResourcePolicy> DynResourcePolicy for P {
    fn allows_dyn<'a>(
        &'a self,
        request: &'a ResourceRequest<'a>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.allows(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn meta(p: Option<Principal>) -> Metadata {
        let mut m = Metadata::new();
        if let Some(p) = p {
            m.set_principal(p);
        }
        m
    }

    async fn check(layer: AuthorizeLayer, p: Option<Principal>) -> Result<(), Error> {
        layer.check(None, "DeleteUser", &(), &meta(p)).await
    }

    #[tokio::test]
    async fn statuses_and_messages() {
        let layer = AuthorizeLayer::new()
            .permissions(&["user:delete", "user:read"])
            .roles(&["admin"]);
        let err = check(layer, None).await.unwrap_err();
        assert_eq!(err.status(), Status::Unauthenticated);

        let p = Principal::new("u1").with_permissions(["user:read"]);
        let err = check(layer, Some(p)).await.unwrap_err();
        assert_eq!(err.status(), Status::Forbidden);
        assert_eq!(
            err.message(),
            "`DeleteUser` requires permission `user:delete` and role `admin`, which principal `u1` lacks"
        );

        let ok = Principal::new("u2")
            .with_permissions(["user:read", "user:delete"])
            .with_roles(["admin"]);
        check(layer, Some(ok)).await.unwrap();
        check(layer, Some(Principal::admin("root")))
            .await
            .unwrap_err();
        check(layer.admin_override(), Some(Principal::admin("root")))
            .await
            .unwrap();
    }
}
