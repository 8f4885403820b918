//! What the console's in-process router tests share: signed-in accounts
//! (cookie and CSRF token both `NAME-token`) and requests.

use axum::body::Body;
use axum::http::{Request, header};
use jiff::Timestamp;

use crate::console::access::{COOKIE, token_digest};
use crate::model::{ConsoleRole, SiteId};
use crate::store::{ConsoleStore, NewConsoleUser, SqliteStore};

pub async fn session(store: &SqliteStore, name: &str, role: ConsoleRole, site: SiteId) {
    let user = store
        .create_console_user(
            NewConsoleUser {
                username: name,
                password_hash: "not used",
                role,
                sites: Some(vec![site]),
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    let token = format!("{name}-token");
    store
        .create_console_session(
            &token_digest(&token),
            user,
            &token,
            true,
            "192.0.2.9",
            Timestamp::now(),
        )
        .await
        .unwrap();
}

pub fn post(path: &str, who: &str, form: &str) -> Request<Body> {
    Request::post(path)
        .header(header::COOKIE, format!("{COOKIE}={who}-token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap()
}

pub fn get(path: &str, who: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, format!("{COOKIE}={who}-token"))
        .body(Body::empty())
        .unwrap()
}

pub async fn body(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}
