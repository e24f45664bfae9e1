BEGIN;
UPDATE t SET v = 'x' WHERE id = 1;
UPDATE t SET n = 99 WHERE id = 1;
UPDATE t SET v = 'y', n = n + 1 WHERE id = 1;
COMMIT;
-- a second transaction, same tag
UPDATE t SET v = 'z' WHERE id = 1;
