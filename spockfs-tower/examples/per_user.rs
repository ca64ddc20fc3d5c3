//! Each authenticated user gets their own root, acting as their own Unix
//! account; nobody else gets anything (there is no default root).
//!
//! ```sh
//! # as root (switching to the users' accounts needs CAP_SETUID/CAP_SETGID)
//! cargo run -p spockfs-tower --example per_user -- 127.0.0.1:8080
//! curl -u alice:wonderland -X READDIR http://127.0.0.1:8080/fs/
//! ```
//!
//! Users and passwords are a fixed table here, to keep the example whole;
//! a real server checks a password hash (bcrypt, argon2) or a token, and
//! maps its users to Unix accounts however it likes.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use spockfs_tower::{Identity, Mount, SpockFs};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A user: their password, home directory and Unix account.
struct User {
    password: &'static str,
    home: &'static str,
    account: &'static str,
}

/// The users, and each one's mount and identity once first used: a
/// `Mount::local` opens its root on first use and keeps it open, so it is
/// made once per user, not once per request.
struct Users {
    table: HashMap<&'static str, User>,
    opened: Mutex<HashMap<&'static str, (Mount, Identity)>>,
}

impl Users {
    /// The mount and identity of `name` if `password` is theirs.
    fn login(&self, name: &str, password: &str) -> Option<(Mount, Identity)> {
        let (name, user) = self.table.get_key_value(name)?;
        if user.password.as_bytes() != password.as_bytes() {
            return None;
        }
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = opened.get(name) {
            return Some(found.clone());
        }
        // An account missing from the user database is refused, not served
        // as the server's own user.
        let identity = Identity::of_user(user.account).ok()?;
        let entry = (Mount::local(user.home), identity);
        opened.insert(name, entry.clone());
        Some(entry)
    }
}

/// `Authorization: Basic base64(user:password)` -> (user, password).
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Fail closed: a request goes on only with its user's mount and identity.
async fn authenticate(State(users): State<Arc<Users>>, mut req: Request, next: Next) -> Response {
    let login = basic_credentials(&req).and_then(|(u, p)| users.login(&u, &p));
    let Some((mount, identity)) = login else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"spockfs\"")],
        )
            .into_response();
    };
    req.extensions_mut().insert(mount);
    req.extensions_mut().insert(identity);
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let users = Arc::new(Users {
        table: HashMap::from([
            (
                "alice",
                User {
                    password: "wonderland",
                    home: "/srv/homes/alice",
                    account: "alice",
                },
            ),
            (
                "bob",
                User {
                    password: "builder",
                    home: "/srv/homes/bob",
                    account: "bob",
                },
            ),
        ]),
        opened: Mutex::new(HashMap::new()),
    });
    // No default root and no vhosts: a request the middleware did not give
    // a mount to is never served from anywhere.
    let fs = SpockFs::builder().build();
    let app = Router::new()
        .nest_service("/fs", fs)
        .layer(axum::middleware::from_fn_with_state(users, authenticate));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
