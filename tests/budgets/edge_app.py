"""The app the edge tests serve with uvicorn (several worker processes): budgets from Redis,
a metered OpenAI client pointed at the test's fake provider. Configured by environment:
``OC_REDIS_URL``, ``OC_BUDGET_PREFIX``, ``OC_FAKE_URL``, ``OC_BUDGET_LIMIT``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ownership_ctx import Keys, Policy, budgets, metering
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.budgets import Budget, BudgetExceeded, Budgets
from ownership_ctx.budgets.redis_counters import RedisCounters

MODEL = "gpt-4o-mini"
MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": "Summarize: the printer is on fire"}]
BODY = {"messages": MESSAGES, "model": MODEL, "max_tokens": MAX_TOKENS}  # as the SDK sends it


def make_budgets() -> Budgets:
    limit = Decimal(os.environ.get("OC_BUDGET_LIMIT", "0.001"))
    counters = RedisCounters(os.environ["OC_REDIS_URL"], prefix=os.environ["OC_BUDGET_PREFIX"])
    budget = Budget("support-daily", limit, "day", {"owner_team": "support"})
    return Budgets([budget], counters, refresh=0.05)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    budgets.install(make_budgets())
    app.state.llm = metering.instrument(
        openai.AsyncOpenAI(base_url=os.environ["OC_FAKE_URL"], api_key="sk-test", max_retries=0)
    )
    yield


async def summarize(request: Request) -> Response:
    try:
        reply = await request.app.state.llm.chat.completions.create(
            model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES
        )
    except BudgetExceeded as refused:  # the reservation was refused: nothing was sent
        return Response(
            refused.refusal.problem_body(),
            status_code=429,
            media_type="application/problem+json",
            headers={"x-refused-by": "metering"},
        )
    return JSONResponse({"summary": reply.choices[0].message.content})


app = Starlette(routes=[Route("/v1/summarize", summarize, methods=["POST"])], lifespan=lifespan)
app.add_middleware(
    OwnershipMiddleware, policy=Policy(mode="enforce", required=("owner_team",)), keys=Keys()
)
