#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;
use spockfs_core::{Engine, Routes};
use std::sync::Arc;

mod body;
mod serve;
pub use serve::{respond, serve};

/// Which requests are SpockFS, and the engine that answers each: a
/// [`Routes`] of engines. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct SpockFsModule {
    routes: Arc<Routes<Engine>>,
}

impl From<Routes<Engine>> for SpockFsModule {
    fn from(routes: Routes<Engine>) -> SpockFsModule {
        SpockFsModule::new(routes)
    }
}

impl SpockFsModule {
    /// Serves `routes`: a request its host and path prefix route to an
    /// engine is SpockFS, with the prefix stripped.
    pub fn new(routes: Routes<Engine>) -> SpockFsModule {
        SpockFsModule {
            routes: Arc::new(routes),
        }
    }

    /// The routes.
    pub fn routes(&self) -> &Routes<Engine> {
        &self.routes
    }

    /// The engine and the stripped path for a request, if it is SpockFS.
    pub fn route_for(&self, req: &RequestHeader) -> Option<(&Engine, String)> {
        self.routes
            .find_request(&req.uri, &req.headers)
            .map(|(engine, path)| (engine, path.to_owned()))
    }

    /// Answers `session` if it is a SpockFS request (`Ok(true)`: the
    /// response has been written), or leaves it untouched (`Ok(false)`).
    /// Call it in your `ProxyHttp::request_filter`, after your own checks
    /// (authentication, rate limits): whatever it is not called for, it
    /// does not answer.
    ///
    /// The request's extensions (`session.req_header_mut().extensions_mut()`)
    /// go to the engine with it, all of them, as the tower service passes
    /// an `http::Request`'s. So a [`spockfs_core::Mount`] inserted there
    /// (say, the authenticated user's home) is the root for this request,
    /// taking precedence over the engine's vhosts and default mount; the
    /// route (host, prefix) still decides whether the request is SpockFS.
    ///
    /// ```no_run
    /// # use pingora::proxy::Session;
    /// # use spockfs_pingora::SpockFsModule;
    /// use spockfs_core::Mount;
    ///
    /// // In `ProxyHttp::request_filter`: each user in their own directory.
    /// async fn request_filter(spockfs: &SpockFsModule, session: &mut Session) -> pingora::Result<bool> {
    ///     let user = match session.req_header().headers.get("x-api-key").map(|k| k.as_bytes()) {
    ///         Some(b"alice-secret") => "alice",
    ///         Some(b"bob-secret") => "bob",
    ///         _ => {
    ///             session.respond_error(401).await?;
    ///             return Ok(true); // answered: neither SpockFS nor the upstream sees it
    ///         }
    ///     };
    ///     // Real code keeps one Mount per user: a LocalFs opens its root on first use.
    ///     let home = Mount::local(format!("/srv/homes/{user}"));
    ///     session.req_header_mut().extensions_mut().insert(home);
    ///     spockfs.handle(session).await
    /// }
    /// ```
    pub async fn handle(&self, session: &mut Session) -> Result<bool> {
        let Some((engine, path)) = self.route_for(session.req_header()) else {
            return Ok(false);
        };
        serve(engine, &path, session).await?;
        Ok(true)
    }
}
