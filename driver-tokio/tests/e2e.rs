//! The shared end-to-end suite on tokio, on both runtime flavours.
#![allow(missing_docs)]

fn current_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn multi_thread<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

mod on_current_thread {
    natrix_driver_core::e2e_suite!(super::current_thread, natrix_tokio::Tokio);
}

mod on_multi_thread {
    natrix_driver_core::e2e_suite!(super::multi_thread, natrix_tokio::Tokio);
}
