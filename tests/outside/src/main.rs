//! The README's examples, compiled and run from outside the workspace.

use spockfs_core::{Engine, Routes};
use spockfs_pingora::SpockFsModule;
use spockfs_tower::{MemFs, Mount, SpockFs};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let www = std::env::temp_dir().join(format!("spockfs-outside-{}", std::process::id()));
    std::fs::create_dir_all(&www)?;

    // README: the axum one-liner.
    let app = axum::Router::new()
        .nest_service("/fs", SpockFs::new(&www))
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // README: the builder with vhosts and an in-memory root.
    let _fs = SpockFs::builder()
        .root(&www)
        .vhost("a.example.com", Mount::local(&www))
        .vhost("scratch.example.com", Mount::new(MemFs::new()))
        .xattr_limit(64 * 1024)
        .build();

    // README: the Pingora module.
    let spockfs = SpockFsModule::new(
        Routes::new()
            .vhost("files.example.com", Engine::new(&www))
            .prefix("/fs", Engine::new(&www)),
    );
    assert_eq!(spockfs.routes().iter().count(), 2);

    // README: the client library, against the axum server above.
    let fs = spockfs_client::Client::new(&format!("http://{addr}/fs"))?;
    fs.mkdir(b"/docs", 0o755).await?;
    fs.create(b"/docs/hello.txt", 0o644).await?;
    fs.write(b"/docs/hello.txt", 0, bytes::Bytes::from_static(b"hello"))
        .await?;
    let data = fs.read(b"/docs/hello.txt", 0, 4096).await?;
    assert_eq!(&data[..], b"hello");
    assert_eq!(std::fs::read(www.join("docs/hello.txt"))?, b"hello");

    // The mount's library: its semantics without a kernel mount.
    let mfs = spockfs_mount::MountFs::new(fs, spockfs_mount::MountConfig::default());
    let (st, _ttl) = mfs.getattr(1).await.map_err(|e| format!("getattr: {e:?}"))?;
    assert!(st.mode & 0o040000 != 0, "the root is a directory");

    // spockfs-conn: the default connection cap of this process.
    let _cap = spockfs_conn::default_max_connections(1024);
    let _ = spockfs_proto::method::Method::Getattr;

    std::fs::remove_dir_all(&www)?;
    println!("outside the workspace: README examples built and ran against http://{addr}/fs");
    Ok(())
}
