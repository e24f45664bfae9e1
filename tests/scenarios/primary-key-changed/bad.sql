UPDATE t SET id = 10, v = 'moved' WHERE id = 1;
UPDATE t SET id = id + 100 WHERE id = 2;
