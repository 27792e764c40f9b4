-- Which stack registered a town (components/stacks/ownership.py: `<project>/<stack>/<client>/<app>`). A town's sandbox id
-- is global (user + town name), so two silos that declare the same town would otherwise share its row
-- and its Fly app: a registration takes over an active row only when the row is its own. Rows made
-- before this column have no owner; the stack that holds them in its state writes it at its next `up`.
ALTER TABLE gastown_towns ADD COLUMN owner text CHECK (owner IS NULL OR length(owner) BETWEEN 1 AND 400);
