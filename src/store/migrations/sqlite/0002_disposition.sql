-- What the line does with each unit (pass, fail, review), for models with a decision rule;
-- NULL for verdicts of models without one and for verdicts stored before this migration.
ALTER TABLE verdicts ADD COLUMN disposition TEXT;
CREATE INDEX verdicts_disposition ON verdicts (disposition, seq);
