"""Checkout address lookup, standing in for the vendor's Google Places proxy.

A handful of fixed places is enough for the SDK's address form to autocomplete
and fill itself in; nothing leaves the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.sandbox.bodies import Fields, read_object
from broker.sandbox.checkout_tokens import CheckoutGrant
from broker.sandbox.errors import not_found
from broker.sandbox.guards import checkout_endpoint
from broker.sandbox.state import SandboxState


@dataclass(frozen=True, slots=True)
class Place:
    place_id: str
    name: str
    street_number: str
    route: str
    city: str
    region: tuple[str, str]  # (long, short), e.g. ("New York", "NY")
    country: tuple[str, str]
    postal_code: str

    @property
    def secondary_text(self) -> str:
        return f"{self.city}, {self.region[1]}, {self.country[0]}"

    def components(self) -> list[dict[str, object]]:
        parts = (
            (self.street_number, self.street_number, "street_number"),
            (self.route, self.route, "route"),
            (self.city, self.city, "locality"),
            (*self.region, "administrative_area_level_1"),
            (*self.country, "country"),
            (self.postal_code, self.postal_code, "postal_code"),
        )
        return [
            {"long_name": long, "short_name": short, "types": [kind]} for long, short, kind in parts
        ]


PLACES = (
    Place("sbx_place_ny", "Empire State Building", "350", "5th Avenue", "New York",
          ("New York", "NY"), ("United States", "US"), "10118"),
    Place("sbx_place_sf", "Ferry Building", "1", "Ferry Building", "San Francisco",
          ("California", "CA"), ("United States", "US"), "94111"),
    Place("sbx_place_tor", "CN Tower", "290", "Bremner Boulevard", "Toronto",
          ("Ontario", "ON"), ("Canada", "CA"), "M5V 3L9"),
    Place("sbx_place_mtl", "Place Ville Marie", "1", "Place Ville Marie", "Montreal",
          ("Quebec", "QC"), ("Canada", "CA"), "H3B 2B6"),
)  # fmt: skip


@checkout_endpoint
async def autocomplete(
    request: web.Request, state: SandboxState, grant: CheckoutGrant
) -> web.Response:
    fields = Fields(await read_object(request))
    query = fields.text("q").lower()
    country = fields.text("country").upper()
    fields.text("sessiontoken")
    fields.check()
    matches = [
        place
        for place in PLACES
        if place.country[1] == country
        and query in f"{place.street_number} {place.route} {place.city}".lower()
    ]
    return web.json_response(
        {
            "data": [
                {
                    "place_id": place.place_id,
                    "description": f"{place.street_number} {place.route}, {place.secondary_text}",
                    "structured_formatting": {
                        "main_text": f"{place.street_number} {place.route}",
                        "secondary_text": place.secondary_text,
                    },
                }
                for place in matches
            ]
        }
    )


@checkout_endpoint
async def details(request: web.Request, state: SandboxState, grant: CheckoutGrant) -> web.Response:
    fields = Fields(await read_object(request))
    place_id = fields.text("id")
    fields.text("sessiontoken")
    fields.check()
    place = next((p for p in PLACES if p.place_id == place_id), None)
    if place is None:
        raise not_found("Place not found")
    return web.json_response(
        {"data": {"result": {"address_components": place.components(), "name": place.name}}}
    )
