ALTER TABLE policy_plans ADD COLUMN artifact_name TEXT NOT NULL DEFAULT '';
UPDATE policy_plans SET artifact_name = kind WHERE artifact_name = '';
