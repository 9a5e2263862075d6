"""Modal screens of ``llmgw top``: the key and budget forms, the one-time secret, the confirmation
for a destructive action, and the help screen.

A form dismisses with a dict of its fields' raw strings (or None when cancelled); parsing and
validation happen in ``tui.actions`` through the governance functions, so the rules are the CLI's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

MODAL_CSS = """
/* part of the app's CSS (TopApp.CSS) */
ModalScreen {
    align: center middle;
}
#dialog {
    width: 70;
    height: auto;
    max-height: 100%;
    border: round $accent;
    background: $surface;
    padding: 0 1;
}
#dialog .dialog-title {
    text-style: bold;
    width: 100%;
    margin-bottom: 1;
}
#dialog .row {
    height: 1;
    margin-bottom: 1;
}
#dialog .row Label {
    width: 16;
}
#dialog .row Input {
    width: 1fr;
}
#dialog .hint {
    color: $text-muted;
    margin-bottom: 1;
}
#dialog .buttons {
    height: 1;
    align-horizontal: right;
}
#dialog .buttons Button {
    margin-left: 2;
}
#secret {
    text-style: bold;
    color: $warning;
    margin-bottom: 1;
}
"""


class FormScreen(ModalScreen[dict[str, str] | None]):
    """Labelled one-line inputs and OK / Cancel; Enter in any field submits, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[tuple[str, str, str, str]], *, ok: str = "OK",
                 hint: str = "") -> None:
        """``fields``: (id, label, value, placeholder) for each input."""
        super().__init__()
        self.form_title, self.fields, self.ok_label, self.hint = title, fields, ok, hint

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.form_title, classes="dialog-title")
            for fid, label, value, placeholder in self.fields:
                with Horizontal(classes="row"):
                    yield Label(label)
                    yield Input(value=value, placeholder=placeholder, id=f"f-{fid}", compact=True)
            if self.hint:
                yield Static(self.hint, classes="hint", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel", compact=True)
                yield Button(self.ok_label, id="ok", variant="primary", compact=True)

    def values(self) -> dict[str, str]:
        return {fid: self.query_one(f"#f-{fid}", Input).value for fid, *_ in self.fields}

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(self.values())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(self.values() if event.button.id == "ok" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SecretScreen(ModalScreen[None]):
    """The new key's secret, shown this once (it is stored only as a hash)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"), Binding("enter", "close", "Close"), Binding("c", "copy", "Copy"),
    ]

    def __init__(self, secret: str, key: dict[str, Any]) -> None:
        super().__init__()
        self.secret, self.key = secret, key

    def compose(self) -> ComposeResult:
        k = self.key
        who = k.get("customer_id") or "-"
        if k.get("team_id"):
            who += f" / {k['team_id']}"
        with Vertical(id="dialog"):
            yield Label(f"Key created: {k.get('name') or k['id']}", classes="dialog-title")
            yield Static(f"id {k['id']}  ·  {who}", markup=False, classes="hint")
            yield Static(self.secret, id="secret", markup=False)
            yield Static("Copy it now (c copies it through the terminal, if it allows): this is the only "
                         "time the secret is shown.", classes="hint", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Done", id="ok", variant="primary", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)  # OSC 52: the terminal puts it on the clipboard
        self.notify("copied to the clipboard (if the terminal supports OSC 52)")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question for a destructive action: ``y`` confirms, ``n`` or Escape declines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"), Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, *, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, classes="dialog-title", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("No (n)", id="no", compact=True)
                yield Button(f"{self.yes} (y)", id="yes", variant="error", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


HELP = [
    ("Everywhere", [("q", "quit"), ("?", "this help (again, or escape, to close)"), ("r", "refresh now"),
                    ("tab ↑ ↓", "move between tables and rows")]),
    ("All customers", [("enter", "open the customer: its teams and keys"), ("n", "new key for the customer"),
                       ("b", "set or change the customer's budget")]),
    ("One customer", [("escape", "back to all customers"), ("n / b", "new key / budget for this customer"),
                      ("d", "disable the selected key (asks first)"), ("e", "enable the selected key again")]),
    ("Forms", [("enter", "submit; escape cancels")]),
]


class HelpScreen(ModalScreen[None]):
    """Every key of the dashboard."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"), Binding("question_mark", "close", "Close"),
    ]

    def compose(self) -> ComposeResult:
        lines = []
        for section, keys in HELP:
            lines.append(f"[b]{section}[/b]")
            lines += [f"  [b $accent]{k:<8}[/] {what}" for k, what in keys]
        with Vertical(id="dialog"):
            yield Label("llmgw top: keys", classes="dialog-title")
            yield Static("\n".join(lines))
            yield Static("Bars turn yellow at a budget's warn level, red at its limit. blocked: keys every request "
                         "is refused for (a key, team or customer budget spent) of the active keys; errors: the "
                         "top error codes. A terminal 110+ columns wide shows more columns.", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
