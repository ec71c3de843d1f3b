//! A wrapper around a client connection's stream ([`crate::h2_watch`],
//! [`crate::head_watch`]) watches what it reads and passes everything else
//! straight to the stream it wraps: [`delegate_to_inner`] writes that part
//! once for both.

/// Implements, for a wrapper with a field `inner` holding a
/// `pingora::protocols::Stream`, every stream trait pingora needs besides
/// `AsyncRead` and `Peek` by passing each call to `inner`.
macro_rules! delegate_to_inner {
    ($t:ty) => {
        impl ::tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }

        #[::async_trait::async_trait]
        impl ::pingora::protocols::Shutdown for $t {
            async fn shutdown(&mut self) {
                self.inner.shutdown().await
            }
        }

        impl ::pingora::protocols::UniqueID for $t {
            fn id(&self) -> ::pingora::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl ::pingora::protocols::Ssl for $t {
            fn get_ssl(&self) -> Option<&::pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<::std::sync::Arc<::pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<::pingora::protocols::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl ::pingora::protocols::GetTimingDigest for $t {
            fn get_timing_digest(&self) -> Vec<Option<::pingora::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> ::std::time::Duration {
                self.inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> ::std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl ::pingora::protocols::GetProxyDigest for $t {
            fn get_proxy_digest(
                &self,
            ) -> Option<::std::sync::Arc<::pingora::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: ::pingora::protocols::raw_connect::ProxyDigest) {
                self.inner.set_proxy_digest(digest)
            }
        }

        impl ::pingora::protocols::GetSocketDigest for $t {
            fn get_socket_digest(
                &self,
            ) -> Option<::std::sync::Arc<::pingora::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: ::pingora::protocols::SocketDigest) {
                self.inner.set_socket_digest(digest)
            }
        }
    };
}

pub(crate) use delegate_to_inner;
