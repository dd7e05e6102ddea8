"""Shared test data for the transport tests: a self-signed certificate and a manual clock."""

from __future__ import annotations

# A throwaway self-signed certificate for 127.0.0.1 (EC P-256, valid to 2126) and its key:
# test data, not a secret. No trust store holds it, so a client that verifies TLS must refuse.
SELF_SIGNED_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDiVge77f6WEwRBKN
uO6aBNvo5RYGo4c6Pv8MXlSsKtChRANCAAQur8gl/9DX7Ni8bda7eVPdcxGqn6Ea
CM3v+5+ZfGaReRZDJ3r8GcSVMKJkM5C/DDtcMy1hCkw9vqUMA6msW76W
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgIUSvWoJ4d8E4lTOhfX6bbKWj1RGAYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNTEwMDc1MloYDzIxMjYxMTAx
MTAwNzUyWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQur8gl/9DX7Ni8bda7eVPdcxGqn6EaCM3v+5+ZfGaReRZDJ3r8GcSV
MKJkM5C/DDtcMy1hCkw9vqUMA6msW76Wo2QwYjAdBgNVHQ4EFgQUKT4Mn6VnmErq
//VGvAhMjPX1j30wHwYDVR0jBBgwFoAUKT4Mn6VnmErq//VGvAhMjPX1j30wDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUC
IQDTEdNpYROMHV5bg/UmrypHVYvYs7zfU4PMd+d9Ql9DDwIgd/buC3Ez11JHEP5t
yAD2FRC7WhldbI1Hh5WaBVJuj60=
-----END CERTIFICATE-----
"""


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s
