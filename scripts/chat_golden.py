#!/usr/bin/env python3
"""chat_golden.py — reference renderings of real chat templates for tests/test_chat.c.

Renders each template of tests/data/chat/templates.json with Jinja2 set up as Hugging Face
transformers' apply_chat_template does (sandboxed, trim_blocks, lstrip_blocks, raise_exception)
over a few conversations, and writes tests/data/chat/golden.json: one case per (template,
conversation, add_generation_prompt) with the expected text or "error": true where the template
raises. Usage: python3 scripts/chat_golden.py   (needs jinja2)
"""
import json, os
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "chat")

CONVS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "  Hi\n"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "caf\u00e9 \u2014 na\u00efve \u2713"},
     {"role": "assistant", "content": " spaced answer \n"}],
    [{"role": "system", "content": "You answer in French."},
     {"role": "user", "content": "Bonjour"}],
]


def raise_exception(msg):
    raise ValueError(msg)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    templates = json.load(open(os.path.join(HERE, "templates.json")))
    cases = []
    for t in templates:
        tmpl = env.from_string(t["template"])
        for ci, conv in enumerate(CONVS):
            for gen in (True, False):
                case = {"template": t["name"], "conv": ci, "add_generation_prompt": gen,
                        "messages": conv}
                try:
                    case["expected"] = tmpl.render(messages=conv, add_generation_prompt=gen,
                                                   bos_token=t["bos_token"], eos_token=t["eos_token"])
                except ValueError as e:
                    case["error"] = str(e)
                cases.append(case)
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(cases, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{len(cases)} cases written")


if __name__ == "__main__":
    main()
