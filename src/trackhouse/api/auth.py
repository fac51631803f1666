"""Who is asking: private keys on /api/*, public keys (company ids) on /client/* and Track.

Missing or bad credentials are 401 `not_authenticated`; a valid key without the endpoint's
scope is 403 `permission_denied` (design.md, Decisions).
"""

from __future__ import annotations

from starlette.requests import Request

from trackhouse.api.errors import APIError
from trackhouse.store.accounts import AccountStore, ApiKey

SCHEME = "klaviyo-api-key "


def _unauthenticated(detail: str) -> APIError:
    return APIError(401, "not_authenticated", detail)


def private_key(request: Request, accounts: AccountStore, scope: str) -> ApiKey:
    """The request's private key, which must have `scope`."""
    header = request.headers.get("authorization")
    if not header:
        raise _unauthenticated("Missing authorization header. Please use Klaviyo-API-Key.")
    if not header[: len(SCHEME)].lower() == SCHEME:
        raise _unauthenticated(
            "Missing or invalid authorization scheme. Please use Klaviyo-API-Key."
        )
    key = accounts.authenticate(header[len(SCHEME) :].strip())
    if key is None:
        raise _unauthenticated("Incorrect authentication credentials.")
    if scope not in key.scopes:
        raise APIError(
            403,
            "permission_denied",
            f"The API key does not have the required scope '{scope}' for this endpoint.",
        )
    return key


def private_key_account(request: Request, accounts: AccountStore, scope: str) -> str:
    """The account of the request's private key, which must have `scope`."""
    return private_key(request, accounts, scope).account_id


def public_key_account(request: Request, accounts: AccountStore) -> str:
    """The account named by `?company_id=` (the public key) on /client/* endpoints."""
    company_id = request.query_params.get("company_id")
    if not company_id:
        raise APIError(
            400,
            "invalid",
            "The 'company_id' query parameter (your public API key) is required.",
            parameter="company_id",
        )
    if not accounts.account_exists(company_id):
        raise _unauthenticated("Invalid public API key (company_id).")
    return company_id
