-- Indexes for the queue's hot paths. Each partial index holds only the rows its
-- query reads (queued, running, backing off), so its scans stay small however long
-- the history grows and whatever the planner's statistics say.

-- One running task per node and exclusive kind, enforced by the database: two
-- claims racing for the same node cannot both start a task of that kind.
CREATE UNIQUE INDEX tasks_one_running ON tasks (node_id, kind) WHERE state = 'running' AND exclusive = 1;
-- Claims: the oldest queued task of each kind of a node.
CREATE INDEX tasks_claim ON tasks (node_id, kind, id) WHERE state = 'queued';
-- Lease rescue: running tasks (the only ones with a lease) by lease end. The
-- predicate names the lease, not the state, so claims never pick this index to look
-- for a running task of a kind: `tasks_one_running` answers that.
CREATE INDEX tasks_running_leases ON tasks (lease_until_ms) WHERE lease_until_ms > 0;
-- Wake-ups when a retry's backoff ends.
CREATE INDEX tasks_backoff ON tasks (not_before_ms) WHERE state = 'queued' AND not_before_ms > created_at_ms;
DROP INDEX tasks_runnable;
DROP INDEX tasks_leases;
