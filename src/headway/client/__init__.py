"""The HTTP client of the Headway REST API."""

from headway.client.api import DEFAULT_SERVER, ApiClient, error_from_response

__all__ = ["DEFAULT_SERVER", "ApiClient", "error_from_response"]
