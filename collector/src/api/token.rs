//! Who is calling the JSON API, decided in one place. Every API handler
//! takes a `Token<P>`: a bearer token (`Authorization: Bearer hmapi_…`)
//! that is known, not revoked, and whose role grants permission `P` —
//! the console's role matrix (`console::access::allows`), so a token can
//! do exactly what a console account of the same role and sites can.
//!
//! Architecture invariant: no API handler reads the `Authorization`
//! header itself; it receives a `Viewer` from `Token<P>`.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jiff::Timestamp;

use super::ApiError;
use crate::console::Console;
use crate::console::access::{Needs, Viewer, may_grant, peer_address};
use crate::store::{ApiTokenInfo, ConsoleUser};

/// A caller whose token's role grants `P`.
pub struct Token<P: Needs>(pub Viewer, pub PhantomData<P>);

/// The `Viewer` a token acts as: its role, and its site or every site.
pub fn viewer_for(token: &ApiTokenInfo, address: String) -> Viewer {
    Viewer {
        user: ConsoleUser {
            id: 0,
            username: format!("api-token {}", token.id),
            password_hash: String::new(),
            role: token.role,
            all_sites: token.all_sites,
            sites: vec![token.site_id],
            disabled: false,
            totp_secret: String::new(),
            created_at: token.created_at,
        },
        actor: format!("api-token:{}", token.id),
        // Bearer tokens are not sent by browsers on their own, so there
        // is no cross-site request to guard against.
        csrf_token: String::new(),
        session: String::new(),
        address,
    }
}

impl<P: Needs> FromRequestParts<Console> for Token<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, ApiError> {
        let Some(bearer) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err(ApiError::Unauthorized(
                "missing Authorization: Bearer TOKEN",
            ));
        };
        let token = console
            .store
            .use_api_token(&crate::auth::secret_digest(bearer), Timestamp::now())
            .await?
            .ok_or(ApiError::Unauthorized("unknown or revoked token"))?;
        // A token made in the console works only while its maker could
        // still make it: a disabled account, a narrower role or a lost
        // site takes its tokens' rights with it.
        if let Some(maker) = token.created_by {
            let still_could = match console.store.console_user(maker).await? {
                Some(user) => {
                    !user.disabled
                        && may_grant(user.role, token.role)
                        && user.sees_site(token.site_id)
                        && (user.all_sites || !token.all_sites)
                }
                None => false,
            };
            if !still_could {
                return Err(ApiError::Unauthorized(
                    "this token's maker no longer holds its rights; ask for a new one",
                ));
            }
        }
        let viewer = viewer_for(&token, peer_address(parts));
        if !viewer.can(P::PERMISSION) {
            let _ = console
                .audit(
                    &viewer,
                    viewer.user.audit_site(),
                    "api_forbidden",
                    &parts.uri.path().chars().take(200).collect::<String>(),
                    &format!("{:?} needed, role {}", P::PERMISSION, token.role),
                )
                .await;
            return Err(ApiError::Forbidden);
        }
        Ok(Token(viewer, PhantomData))
    }
}
