UPDATE t SET id = 0 WHERE id = 1;
UPDATE t SET id = 1 WHERE id = 2;
UPDATE t SET id = 2 WHERE id = 0;
